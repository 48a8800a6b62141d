"""The gateway's configuration: declared once, typed, validated, read once.

Each setting is one field of `Settings`: its environment variable is the field name in
upper case, its type says how the text is read (enumerations are `Literal`s), and its
bounds, and each URL's scheme and host (setting_urls.py), are checked at start-up, so a
mistake fails with one line naming the variable instead of deep inside a library.
Values come from the process environment first, then from a `.env` file in the working
directory (setting_sources.py reads them); a key of that file that is no setting is
warned of.
Everything else takes a `Settings` object rather than reading the environment, so tests
build one directly.

This module must never log or format a secret (`repr` hides them).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin

from stock_gateway.market_data.model import Session
from stock_gateway.setting_urls import URL_RULES, frontend_origins, is_host, url_complaint

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]


class ConfigError(Exception):
    """The configuration cannot run a gateway; the message says what to change."""


def setting(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
) -> Any:
    """A field of `Settings`: its default, optional bounds, and whether it is secret."""
    metadata = {"minimum": minimum, "maximum": maximum}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    # -- upstream ----------------------------------------------------------------------
    finnhub_api_key: str = setting("", secret=True)
    finnhub_ws_url: str = setting("wss://ws.finnhub.io")
    # Upstream reconnect backoff: full jitter, doubling from the initial delay to the cap.
    reconnect_initial_delay: float = setting(0.5, minimum=0.001)
    reconnect_max_delay: float = setting(30.0, minimum=0.001)
    # A connection that stayed up this long resets the backoff to its initial delay.
    reconnect_reset_after: float = setting(10.0, minimum=0)
    # No message at all from the upstream (trades or its pings) for this long: reconnect.
    upstream_idle_timeout: float = setting(90.0, minimum=0.01)
    # The upstream's TCP connect plus WebSocket handshake must finish within this.
    upstream_handshake_timeout: float = setting(10.0, minimum=0.01)
    upstream_subscribe_rate: float = setting(10.0, minimum=0.1)
    upstream_subscribe_burst: int = setting(50, minimum=1)  # those two: (un)subscribes/s
    # Past MAX_UPSTREAM_SYMBOLS (market_data/feed_plan.py): slots for sampled symbols'
    # turns, a turn's length, (un)subscribe messages the planner may cause a minute.
    sampled_slots: int = setting(20, minimum=1)
    sample_turn_seconds: float = setting(20.0, minimum=0.1)
    upstream_changes_per_minute: int = setting(240, minimum=2)
    # The last client leaving a symbol releases it upstream after this many seconds.
    symbol_linger_seconds: float = setting(30.0, minimum=0)
    # A symbol Finnhub refused is refused to every client for this many seconds.
    rejected_symbol_seconds: float = setting(600.0, minimum=0)
    # Trades stamped further than this in the past or the future are skipped (seconds).
    trade_max_age: float = setting(7 * 86400.0, minimum=1)
    trade_max_ahead: float = setting(3600.0, minimum=1)
    # -- Finnhub's REST API: quotes and the market's session (docs/market-hours.md) ---
    rest_enabled: bool = setting(True)  # false: no REST calls, no quotes, no market status
    finnhub_rest_url: str = setting("https://finnhub.io/api/v1")
    finnhub_rest_rate: int = setting(60, minimum=1)  # calls per minute: the plan's limit
    # The plan's window: FINNHUB_REST_RATE calls in any this many seconds (Finnhub counts
    # a minute; tests shorten it so windows pass in seconds).
    finnhub_rest_window: float = setting(60.0, minimum=1)
    quote_ttl: float = setting(60.0, minimum=0)  # seconds a quote is served from the cache
    quote_wait: float = setting(10.0, minimum=0.1)  # seconds a client waits at most
    quote_requests_per_address: float = setting(20.0, minimum=1)  # quote fetches/min
    # Seconds a symbol Finnhub has no quote for (junk) is remembered as such.
    quote_unknown_ttl: float = setting(3600.0, minimum=0)
    # The shares of the usable REST rate (rest_shares.py): one-off GET /quote
    # lookups (symbols nobody subscribes to) may spend QUOTE_LOOKUP_SHARE a minute, and
    # at least QUOTE_SUBSCRIBER_SHARE is kept for the quotes of symbols clients hold.
    quote_lookup_share: float = setting(0.3, minimum=0.01, maximum=1)
    quote_subscriber_share: float = setting(0.2, minimum=0, maximum=1)
    market_exchange: str = setting("US")
    market_status_interval: float = setting(120.0, minimum=0.5)  # seconds between polls
    # -- the REST mirror, GET /api/v1/... for Finnhub's clients (docs/finnhub.md) -------
    # The paths forwarded to Finnhub (comma-separated); any other is refused, never sent.
    finnhub_rest_allow: tuple[str, ...] = setting(
        ("stock/profile2", "stock/metric", "company-news", "news", "calendar/earnings",
         "stock/recommendation", "stock/peers", "search", "stock/market-holiday")
    )  # fmt: skip
    finnhub_rest_cache_bytes: int = setting(16_777_216, minimum=0)  # answers kept, in bytes
    finnhub_rest_wait: float = setting(10.0, minimum=0.1)  # seconds a call waits at most
    # The share of the usable REST rate forwarded calls may spend in any 60 s.
    finnhub_rest_share: float = setting(0.5, minimum=0.01, maximum=1)
    finnhub_rest_requests_per_address: float = setting(20.0, minimum=1)  # uncached calls/min
    # -- serving -----------------------------------------------------------------------
    host: str = setting("127.0.0.1")  # the container sets 0.0.0.0
    port: int = setting(8000, minimum=1, maximum=65535)
    frontend_url: tuple[str, ...] = setting(("http://localhost:3000",))
    log_level: LogLevel = setting("INFO")
    log_format: LogFormat = setting("text")
    demo: bool = setting(False)
    # How fast the simulator trades in demo mode, in trades per second over all symbols.
    demo_trade_rate: float = setting(20.0, minimum=0)
    demo_session: Session = setting("regular")  # the simulated market's hours
    # -- fan-out -----------------------------------------------------------------------
    # Per-client outbox: frames waiting for a slow client before updates are conflated.
    client_outbox_size: int = setting(256, minimum=1)
    # ... and bytes (price updates past it are conflated, other frames evict past twice it).
    client_outbox_bytes: int = setting(4_194_304, minimum=4096)
    # A batch of every update (batch_ms without throttle_ms) is sent early at this size.
    max_batch_bytes: int = setting(32_768, minimum=1024)
    # A client that stays behind (conflating) this long is closed with 1013.
    slow_consumer_timeout: float = setting(10.0, minimum=0.01)
    # Kernel send buffer per client socket in bytes (Linux doubles it for bookkeeping);
    # 0 leaves the kernel's autotuning, which lets a stalled client pin several MB.
    client_send_buffer: int = setting(262_144, minimum=0)
    # Write pre-built frames straight to the transport where that is safe.
    direct_writes: bool = setting(True)
    # -- who may connect, and how much they may ask (docs/limits.md) -------------------
    require_origin: bool = setting(False)
    gateway_token: str = setting("", secret=True)
    max_clients: int = setting(10_000, minimum=1)
    max_message_size: int = setting(4096, minimum=64)
    max_symbols_per_client: int = setting(50, minimum=1)
    max_upstream_symbols: int = setting(50, minimum=1)
    # Symbols one address (or user) may hold, one that n owners hold counting 1/n.
    max_symbols_per_address: int = setting(10, minimum=1)
    # Distinct symbol sets the Finnhub-dialect (`/`) clients of one address may follow at
    # once: each is one frame encoded per upstream message.
    max_symbol_sets_per_address: int = setting(32, minimum=1)
    # Symbols one address (or user) may make the gateway start carrying an hour: each is
    # recorded for months (docs/bars.md), so rotating through new ones is bounded.
    new_symbols_per_address: int = setting(60, minimum=1)
    # Only these symbols or fnmatch patterns (comma-separated, or @/path/to/file with one
    # per line); empty: any valid symbol.
    symbols_allowed: str = setting("")
    client_message_rate: float = setting(10.0, minimum=0.01)  # messages per second
    client_message_burst: int = setting(20, minimum=1)
    rate_limit_close_after: float = setting(5.0, minimum=0)  # seconds over budget before 1008
    heartbeat_interval: float = setting(20.0, minimum=0)  # server pings; 0 disables
    heartbeat_timeout: float = setting(20.0, minimum=0)
    # -- bars (docs/bars.md) -----------------------------------------------------------
    bar_history: int = setting(240, minimum=1)  # closed bars kept per symbol and interval
    bar_grace: float = setting(0.5, minimum=0)  # seconds after a boundary for stragglers
    # Bytes of bar history sent per minute to one client, and to one address (or user).
    history_bytes_per_client: int = setting(8_388_608, minimum=1)
    history_bytes_per_address: int = setting(33_554_432, minimum=1)
    # ... and read over HTTP (GET /bars, /api/v1/stock/candle) by all clients together.
    history_read_bytes_per_minute: int = setting(67_108_864, minimum=1)
    # Where bars are kept (docs/bars.md "Stored bars"): memory://, sqlite:///<path>,
    # postgresql://...; unset: sqlite:///data/bars.sqlite3 in one process, Redis's
    # bounded history on a cluster (where sqlite:// is refused and the leader writes a
    # postgresql:// store, docs/scale-out.md). May carry a password.
    bar_store_url: str = setting("", secret=True)
    # How long stored bars are kept: 1s bars (seconds), 1m bars, 5m to 1h bars, 1d bars.
    bar_retention_1s_seconds: float = setting(3600.0, minimum=1)
    bar_retention_1m_days: float = setting(30.0, minimum=0.001)
    bar_retention_days: float = setting(90.0, minimum=0.001)
    bar_retention_1d_days: float = setting(3650.0, minimum=0.001)
    # -- per user: signed tokens (docs/access.md); none set: no JWT --------------------
    jwt_secret: str = setting("", secret=True)  # HS256
    jwt_public_key: str = setting("")  # PEM (RSA: RS256, P-256: ES256); \n may be escaped
    jwt_jwks_url: str = setting("")  # an identity provider's JWKS endpoint
    jwt_audience: str = setting("")
    jwt_issuer: str = setting("")
    jwt_leeway: float = setting(30.0, minimum=0)  # seconds of clock difference tolerated
    auth_timeout: float = setting(5.0, minimum=0.1)  # seconds for the first message's token
    auth_expiry_warning: float = setting(60.0, minimum=1)  # "expiring" this long before exp
    max_connections_per_user: int = setting(5, minimum=1)
    # -- per address (docs/limits.md) --------------------------------------------------
    max_connections_per_address: int = setting(200, minimum=1)
    address_handshake_rate: float = setting(10.0, minimum=0.01)  # per second
    address_handshake_burst: int = setting(50, minimum=1)
    # Plain HTTP requests per second (burst) from one address: every route but /ws,
    # /stream (counted as connections) and /health (the healthcheck's).
    http_requests_per_address: float = setting(20.0, minimum=0.01)
    http_request_burst: int = setting(100, minimum=1)
    # Proxies whose X-Forwarded-For is believed (uvicorn's rule; "*" trusts anyone).
    forwarded_allow_ips: str = setting("127.0.0.1,::1")
    # -- below the application: sockets, requests and frames ---------------------------
    handshake_timeout: float = setting(10.0, minimum=0.01)  # request headers + WS handshake
    max_request_header_bytes: int = setting(16_384, minimum=1024)
    max_connections: int = setting(0, minimum=0)  # open sockets; 0: open-file limit - 64
    max_pending_per_address: int = setting(32, minimum=1)  # sockets still sending a request
    client_frame_rate: float = setting(20.0, minimum=0.1)  # any WebSocket frame, per second
    client_frame_burst: int = setting(100, minimum=1)
    max_unread_output: int = setting(1_048_576, minimum=65_536)  # bytes a peer leaves unread
    # -- scale-out (docs/scale-out.md); unset: one process, no Redis ------------------
    redis_url: str = setting("", secret=True)  # may carry a password
    redis_prefix: str = setting("stockgw")
    leader_lease_seconds: float = setting(5.0, minimum=0.1)

    def __post_init__(self) -> None:
        # Browsers send an origin (scheme://host[:port]): "http://localhost:3000/" as
        # written in .env would otherwise match no Origin header, for CORS and /ws alike.
        try:
            origins = frontend_origins(self.frontend_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "frontend_url", origins)
        for name in URL_RULES:  # before anything connects to them
            complaint = url_complaint(name, getattr(self, name.lower()))
            if complaint:
                raise ConfigError(complaint)
        for spec in fields(self):
            minimum = spec.metadata.get("minimum")
            value = getattr(self, spec.name)
            if minimum is not None and value < minimum:
                raise ConfigError(f"{spec.name.upper()} must be at least {minimum:g}; got {value}")
            maximum = spec.metadata.get("maximum")
            if maximum is not None and value > maximum:
                raise ConfigError(f"{spec.name.upper()} must be at most {maximum:g}; got {value}")
            choices = choices_of(field_type(spec))
            if choices and value not in choices:
                raise ConfigError(
                    f"{spec.name.upper()} must be one of {', '.join(choices)}; got {value!r}"
                )
        if not is_host(self.host):
            raise ConfigError(
                f"HOST must be an IP address or a host name (no scheme, no port); got {self.host!r}"
            )
        if self.max_batch_bytes > self.max_unread_output // 2:
            # A batch is written whole: past the unread-output limit it would cut readers.
            raise ConfigError("MAX_BATCH_BYTES must be at most half of MAX_UNREAD_OUTPUT")
        shares = self.quote_lookup_share + self.finnhub_rest_share + self.quote_subscriber_share
        if shares > 1 + 1e-9:
            # Together they would promise more calls than the plan has: the first two
            # would take what subscribers' quotes were promised.
            raise ConfigError(
                "QUOTE_LOOKUP_SHARE + FINNHUB_REST_SHARE + QUOTE_SUBSCRIBER_SHARE must be at "
                f"most 1; got {shares:g}"
            )
        if self.bar_grace > 1:
            raise ConfigError(f"BAR_GRACE must be at most 1 (second); got {self.bar_grace}")
        if self.redis_url and self.bar_store_url.startswith("sqlite:"):
            # One process's file: a cluster's processes (on other machines) cannot share it.
            raise ConfigError(
                "BAR_STORE_URL cannot be sqlite:// on a cluster (REDIS_URL is set): use "
                "postgresql://... or leave it unset (Redis's bounded history)"
            )
        # One way to say who a client is: a shared token, or one source of JWT keys.
        ways = [n for n in ("gateway_token", "jwt_secret", "jwt_public_key", "jwt_jwks_url")
                if getattr(self, n)]  # fmt: skip
        if len(ways) > 1:
            raise ConfigError(f"set only one of {', '.join(n.upper() for n in ways)}")

    @property
    def auth_mode(self) -> Literal["none", "token", "jwt"]:
        if self.gateway_token:
            return "token"
        return "jwt" if self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url else "none"

    @property
    def any_origin(self) -> bool:
        return "*" in self.frontend_url

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """FRONTEND_URL's origins, plus in demo mode the gateway's own local address, so
        its /demo page works out of the box."""
        if not self.demo:
            return self.frontend_url
        local = (f"http://localhost:{self.port}", f"http://127.0.0.1:{self.port}")
        return self.frontend_url + local

    def require_upstream(self) -> None:
        """Fail fast when neither a key nor demo mode is configured."""
        if not self.demo and not self.finnhub_api_key:
            raise ConfigError(
                "FINNHUB_API_KEY not found: set it in the environment or in .env, "
                "or run with DEMO=true (python gateway.py --demo) for simulated prices"
            )


def environment_names() -> list[str]:
    """Every variable the gateway reads, in declaration order (for docs and tests)."""
    return [spec.name.upper() for spec in fields(Settings)]


def documented_defaults() -> dict[str, str]:
    """Every variable with its default as text, for /docs."""
    shown: dict[str, str] = {}
    for spec in fields(Settings):
        value = spec.default
        if isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        shown[spec.name.upper()] = text or "(unset)"
    return shown


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def field_type(spec: dataclasses.Field[Any]) -> Any:
    return _field_types()[spec.name]


def choices_of(kind: Any) -> tuple[str, ...]:
    return tuple(get_args(kind)) if get_origin(kind) is Literal else ()
