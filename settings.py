"""The gateway's configuration, read once and typed.

Values come from the process environment first, then from a `.env` file in the
working directory (python-decouple's order). Everything else in the project takes a
`Settings` object instead of reading the environment itself, so tests can build one
directly. This module must never log or format the API key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from decouple import Config, Csv, RepositoryEmpty, RepositoryEnv

DEFAULT_FINNHUB_WS_URL = "wss://ws.finnhub.io"


class ConfigError(Exception):
    """The configuration cannot run a gateway; the message says what to change."""


@dataclass(frozen=True)
class Settings:
    finnhub_api_key: str = field(default="", repr=False)
    finnhub_ws_url: str = DEFAULT_FINNHUB_WS_URL
    host: str = "0.0.0.0"
    port: int = 8000
    frontend_urls: tuple[str, ...] = ("http://localhost:3000",)
    log_level: str = "INFO"
    log_format: str = "text"  # "text" (key=value) or "json"
    demo: bool = False
    # How fast the simulator trades in demo mode, in trades per second over all symbols.
    demo_trade_rate: float = 20.0
    # Upstream reconnect backoff: full jitter, doubling from the initial delay to the cap.
    reconnect_initial_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    # A connection that stayed up this long resets the backoff to its initial delay.
    reconnect_reset_after: float = 10.0
    # No message at all from the upstream (trades or its pings) for this long: reconnect.
    upstream_idle_timeout: float = 90.0
    # Per-client outbox: frames waiting for a slow client before updates are conflated.
    client_outbox_size: int = 256
    # A client that stays behind (conflating) this long is closed with 1013.
    slow_consumer_timeout: float = 10.0
    # Kernel send buffer per client socket in bytes (0: the kernel's autotuning, which
    # lets each stalled client pin up to several MB of kernel memory).
    client_send_buffer: int = 0
    # Write pre-built frames straight to uvicorn's transport where that is safe.
    direct_writes: bool = True
    # -- who may connect, and how much they may ask (README "Security and limits") --
    require_origin: bool = False
    gateway_token: str = field(default="", repr=False)
    max_clients: int = 10_000
    max_message_size: int = 4096
    max_symbols_per_client: int = 50
    max_upstream_symbols: int = 50
    client_message_rate: float = 10.0  # messages per second, sustained
    client_message_burst: int = 20
    rate_limit_close_after: float = 5.0  # seconds of continuous excess before 1008
    # -- scale-out (README "Scale-out"); unset: one process, no Redis --
    redis_url: str = field(default="", repr=False)
    redis_prefix: str = "stockgw"
    leader_lease_seconds: float = 5.0
    heartbeat_interval: float = 20.0  # server pings; 0 disables
    heartbeat_timeout: float = 20.0

    @property
    def any_origin(self) -> bool:
        return "*" in self.frontend_urls

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """FRONTEND_URL's origins, plus in demo mode the gateway's own local address, so
        its /demo page works out of the box."""
        if not self.demo:
            return self.frontend_urls
        local = (f"http://localhost:{self.port}", f"http://127.0.0.1:{self.port}")
        return self.frontend_urls + local

    def require_upstream(self) -> None:
        """Fail fast when neither a key nor demo mode is configured."""
        if not self.demo and not self.finnhub_api_key:
            raise ConfigError(
                "FINNHUB_API_KEY not found: set it in the environment or in .env, "
                "or run with DEMO=true (python gateway.py --demo) for simulated prices"
            )


def load_settings(env_file: str = ".env", **overrides: Any) -> Settings:
    """Read the settings from the environment, then `env_file` if it exists."""
    repository = RepositoryEnv(env_file) if os.path.isfile(env_file) else RepositoryEmpty()
    config = Config(repository)
    settings = Settings(
        finnhub_api_key=config("FINNHUB_API_KEY", default="").strip(),
        finnhub_ws_url=config("FINNHUB_WS_URL", default=DEFAULT_FINNHUB_WS_URL),
        host=config("HOST", default="0.0.0.0"),
        port=config("PORT", default=8000, cast=int),
        frontend_urls=tuple(config("FRONTEND_URL", default="http://localhost:3000", cast=Csv())),
        log_level=config("LOG_LEVEL", default="INFO").upper(),
        log_format=config("LOG_FORMAT", default="text").lower(),
        demo=config("DEMO", default=False, cast=bool),
        demo_trade_rate=config("DEMO_TRADE_RATE", default=20.0, cast=float),
        reconnect_initial_delay=config("RECONNECT_INITIAL_DELAY", default=0.5, cast=float),
        reconnect_max_delay=config("RECONNECT_MAX_DELAY", default=30.0, cast=float),
        reconnect_reset_after=config("RECONNECT_RESET_AFTER", default=10.0, cast=float),
        upstream_idle_timeout=config("UPSTREAM_IDLE_TIMEOUT", default=90.0, cast=float),
        client_outbox_size=config("CLIENT_OUTBOX_SIZE", default=256, cast=int),
        slow_consumer_timeout=config("SLOW_CONSUMER_TIMEOUT", default=10.0, cast=float),
        client_send_buffer=config("CLIENT_SEND_BUFFER", default=0, cast=int),
        direct_writes=config("DIRECT_WRITES", default=True, cast=bool),
        require_origin=config("REQUIRE_ORIGIN", default=False, cast=bool),
        gateway_token=config("GATEWAY_TOKEN", default="").strip(),
        max_clients=config("MAX_CLIENTS", default=10_000, cast=int),
        max_message_size=config("MAX_MESSAGE_SIZE", default=4096, cast=int),
        max_symbols_per_client=config("MAX_SYMBOLS_PER_CLIENT", default=50, cast=int),
        max_upstream_symbols=config("MAX_UPSTREAM_SYMBOLS", default=50, cast=int),
        client_message_rate=config("CLIENT_MESSAGE_RATE", default=10.0, cast=float),
        client_message_burst=config("CLIENT_MESSAGE_BURST", default=20, cast=int),
        rate_limit_close_after=config("RATE_LIMIT_CLOSE_AFTER", default=5.0, cast=float),
        redis_url=config("REDIS_URL", default=""),
        redis_prefix=config("REDIS_PREFIX", default="stockgw"),
        leader_lease_seconds=config("LEADER_LEASE_SECONDS", default=5.0, cast=float),
        heartbeat_interval=config("HEARTBEAT_INTERVAL", default=20.0, cast=float),
        heartbeat_timeout=config("HEARTBEAT_TIMEOUT", default=20.0, cast=float),
    )
    return replace(settings, **overrides)
