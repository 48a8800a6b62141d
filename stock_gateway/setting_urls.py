"""Addresses in the settings: HOST, FRONTEND_URL's origins and the URL-valued settings,
what each one accepts, checked when the settings are read.

A URL setting that is wrong in its scheme or host would otherwise fail late and far
away: a feed that retries forever, a CORS list no browser's Origin matches, a traceback
from deep inside redis-py or the bar store. Each check here gives one line naming the
setting and what it accepts. Values that may carry a password (`REDIS_URL`,
`BAR_STORE_URL`) are described, never shown; the others are shown without user
information or query (a key may hide in either).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

# RFC 3986's scheme: what may be shown of a secret value (a scheme is not a password).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}")


@dataclass(frozen=True)
class UrlRule:
    """What one setting accepts: `accepts` is said in the message, `problem` finds
    what is wrong with a value (None: nothing), `secret` keeps the value out of it, and
    an `optional` setting may be empty (unset: that feature is off)."""

    accepts: str
    problem: Callable[[str], str | None]
    secret: bool = False
    optional: bool = False


def url_complaint(name: str, value: str) -> str | None:
    """What is wrong with `value` for the URL setting `name`, as one line naming the
    setting and what it accepts; None when the value is fine."""
    rule = URL_RULES[name]
    if rule.optional and not value:
        return None
    problem = rule.problem(value)
    if problem is None:
        return None
    if rule.secret:
        found = f"the value set has {problem} (not shown: it may carry a password)"
    else:
        found = f"got {_shown(value)!r} ({problem})"
    return f"{name} must be {rule.accepts}; {found}"


def frontend_origins(entries: tuple[str, ...]) -> tuple[str, ...]:
    """FRONTEND_URL's entries as origins; ValueError naming the first that is none."""
    origins = tuple(map(frontend_origin, entries))
    for entry, origin in zip(entries, origins, strict=True):
        if origin is None:
            raise ValueError(
                "FRONTEND_URL must be comma-separated origins, each scheme://host[:port] "
                f"(http://localhost:3000), or *; got {_shown(entry)!r}"
            )
    return tuple(origin for origin in origins if origin is not None)


def frontend_origin(entry: str) -> str | None:
    """A FRONTEND_URL entry as the Origin a browser sends ("https://App.example/x/" ->
    "https://app.example"; "*" as it is); None for an entry no Origin could match."""
    if entry == "*":
        return entry
    parts = _split(entry)
    if parts is None or not parts.hostname or _port_problem(parts):
        return None
    host_and_port = parts.netloc.rpartition("@")[2]  # an Origin has no user information
    return f"{parts.scheme.lower()}://{host_and_port.lower()}"


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host(host: str) -> bool:
    """An address uvicorn can bind: an IP address, or a host name (RFC 1123 labels)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _split(value: str) -> SplitResult | None:
    """`value` as URL parts when it has the form scheme://..., else None."""
    scheme, separator, _ = value.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        return None
    return urlsplit(value)


def _port_problem(parts: SplitResult) -> str | None:
    try:
        parts.port  # noqa: B018 (urllib checks the port when it is read)
    except ValueError:
        return "a port that is not a number from 0 to 65535"
    return None


def _server_url(value: str, schemes: tuple[str, ...]) -> str | None:
    """The problem with `value` as a URL of one of `schemes` naming a host, if any."""
    parts = _split(value)
    if parts is None:
        return "no scheme://"
    if parts.scheme.lower() not in schemes:
        return f"a {parts.scheme}:// URL"
    if not parts.hostname:
        return "no host"
    return _port_problem(parts)


def _finnhub_ws(value: str) -> str | None:
    return _server_url(value, ("ws", "wss"))


def _finnhub_rest(value: str) -> str | None:
    return _server_url(value, ("http", "https"))


def _jwks(value: str) -> str | None:
    problem = _server_url(value, ("https", "http"))
    parts = urlsplit(value)
    if problem is None and parts.scheme.lower() == "http" and not _is_loopback(parts.hostname):
        return "http:// to a host that is not loopback"
    return problem


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _redis(value: str) -> str | None:
    # redis-py's schemes; unix:// names a socket's path rather than a host.
    parts = _split(value)
    if parts is not None and parts.scheme.lower() == "unix":
        return None if parts.path not in ("", "/") else "no socket path"
    return _server_url(value, ("redis", "rediss", "unix"))


def _bar_store(value: str) -> str | None:
    # The stores bars/recorder.py's open_store knows.
    parts = _split(value)
    if parts is None:
        return "no scheme://"
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return None
    if scheme == "sqlite":
        path = value.partition("://")[2]
        return None if path.startswith("/") and len(path) > 1 else "no path after sqlite:///"
    return _server_url(value, ("postgresql", "postgres"))


URL_RULES: dict[str, UrlRule] = {
    "FINNHUB_WS_URL": UrlRule(
        "a ws:// or wss:// URL with a host (wss://ws.finnhub.io)", _finnhub_ws
    ),
    "FINNHUB_REST_URL": UrlRule(
        "an http:// or https:// URL with a host (https://finnhub.io/api/v1)", _finnhub_rest
    ),
    "JWT_JWKS_URL": UrlRule(
        "an https:// URL with a host (http:// only for a loopback host)", _jwks, optional=True
    ),
    "REDIS_URL": UrlRule(
        "redis://[[user]:password@]host[:port][/db], rediss://... (TLS) or unix:///path/to/socket",
        _redis,
        secret=True,
        optional=True,
    ),
    "BAR_STORE_URL": UrlRule(
        "memory://, sqlite:///<path> or postgresql://[user[:password]@]host[:port]/db "
        "(postgres:// too)",
        _bar_store,
        secret=True,
        optional=True,
    ),
}


def _shown(value: str) -> str:
    """`value` without user information, query or fragment (where keys are put)."""
    parts = _split(value)
    if parts is None:
        return value.partition("?")[0].rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
