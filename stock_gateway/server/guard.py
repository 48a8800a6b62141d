"""Limits below the application, and the counters that enforce them, per process.

`ConnectionLimits` are the socket- and frame-level limits (docs/limits.md, "Below the
application"); a `ConnectionGuard` holds them plus what every connection's protocol shares:
sockets per peer address still sending their request, refusal counts for `/metrics`,
and a rate-limited log line when a limit bites. The lifespan builds one from the
settings and hands it to the server protocols (uvicorn_protocols.py, ws_protocol.py)
through uvicorn's lifespan state (`STATE_KEY`, read back by `guard_in`). Plain data
and counters: this module never touches a socket.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

STATE_KEY = "gateway.connection_guard"  # where uvicorn's lifespan state holds the guard
FD_RESERVE = 64  # descriptors kept for the upstream, Redis, files and the listener
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    # server/ sits below the settings, so it cannot read them: these defaults serve only
    # the guard used before the lifespan hands over the real one, and a test holds them
    # equal to the settings' (socket_limits.connection_limits(Settings())).
    handshake_timeout: float = 10.0  # request headers, then the WebSocket handshake
    max_request_header_bytes: int = 16_384  # request line plus headers
    max_connections: int = 0  # open sockets; 0: the open-file limit minus a reserve
    max_pending_per_address: int = 32  # sockets per peer still sending their request
    frame_rate: float = 20.0  # incoming WebSocket frames per second, any kind
    frame_burst: int = 100
    max_unread_output: int = 1 << 20  # bytes buffered for a peer that does not read
    write_timeout: float = 10.0  # seconds an HTTP response's writes may stay paused


def open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return what is now allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectionGuard:
    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self.max_connections = self.limits.max_connections or max(
            open_file_limit() - FD_RESERVE, 16
        )
        self.pending: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def refuse_socket(self, open_sockets: int, peer: str, trusted: bool) -> str | None:
        """Why a new socket must be closed at once, or None."""
        if open_sockets > self.max_connections:
            self.count(
                "max_connections",
                f"open sockets at the limit ({self.max_connections}); refusing new ones "
                "(raise the open-file limit or MAX_CONNECTIONS)",
            )
            return "server busy"
        if peer and not trusted and self.pending[peer] >= self.limits.max_pending_per_address:
            self.count(
                "pending_per_address",
                f"too many unfinished requests from one address ({self.pending[peer]})",
            )
            return "too many unfinished requests from your address"
        return None

    def count_write_timeout(self) -> None:
        self.count("write_timeout", "aborting clients that stopped reading")

    def release_pending(self, peer: str) -> None:
        self.pending[peer] -= 1
        if self.pending[peer] <= 0:
            del self.pending[peer]

    def count(self, reason: str, message: str | None = None) -> None:
        """Count a refusal; log `message` at most once per LOG_EVERY_SECONDS per reason."""
        self.refused[reason] += 1
        if message is None:
            return
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged_at[reason] = now
            logger.warning("%s refused=%d", message, self.refused[reason])


_FALLBACK_GUARD = ConnectionGuard()  # before the lifespan hands over the real one


def guard_in(app_state: Mapping[str, Any]) -> ConnectionGuard:
    """The guard the lifespan handed the server protocols (uvicorn's lifespan state)."""
    guard = app_state.get(STATE_KEY)
    return guard if isinstance(guard, ConnectionGuard) else _FALLBACK_GUARD
