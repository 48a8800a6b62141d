"""The settings' limits below the app: `server/guard.ConnectionLimits` (sockets, frames,
header sizes, unread output) from the settings, which server/ cannot read itself (it
sits below them). A conversion, nothing more: the limits are enforced in server/."""

from __future__ import annotations

from stock_gateway.server.guard import ConnectionLimits
from stock_gateway.settings import Settings


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        handshake_timeout=settings.handshake_timeout,
        max_request_header_bytes=settings.max_request_header_bytes,
        max_connections=settings.max_connections,
        max_pending_per_address=settings.max_pending_per_address,
        frame_rate=settings.client_frame_rate,
        frame_burst=settings.client_frame_burst,
        max_unread_output=settings.max_unread_output,
        write_timeout=settings.slow_consumer_timeout,
    )
