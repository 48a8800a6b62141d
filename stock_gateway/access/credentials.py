"""What a request presents, read: the client address's key (whose allowances it uses),
its token (query or `Authorization` header), whether its `Origin` names the gateway
itself; secrets compared in constant time. Pure functions: no settings, no counts
(those are access/admission.py's)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit


def address_key(host: str) -> str:
    """Whose allowance a client address uses: the address itself, or for IPv6 its /64
    (one subscriber line gets a whole /64: counting single addresses would be no limit)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def own_origin(origin: str, host: str | None) -> bool:
    """The gateway's own origin: its pages, and clients such as `websocket-client` that
    send `Origin: http://<host>:<port>` naming the gateway itself. Trusted only when the
    Host asked for is an IP address or `localhost`: DNS rebinding (a hostile page whose
    name is re-pointed at the gateway, so Origin and Host agree) needs a DNS name, and a
    DNS name is trusted only when listed in FRONTEND_URL."""
    if not host or origin.lower() not in (f"http://{host.lower()}", f"https://{host.lower()}"):
        return False
    hostname = urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True  # browsers resolve these to loopback themselves, never through DNS
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def request_token(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """A client's token over HTTP: `?token=`, else `Authorization: Bearer ...`."""
    token = query.get("token")
    authorization = headers.get("authorization", "")
    if token is None and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return token


def same_secret(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())  # constant time
