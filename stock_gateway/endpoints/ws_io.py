"""A client's WebSocket through ASGI, as its session uses it: frames out (`AsgiClientSocket`,
the hub's `ClientSocket`) and frames in (`RequestReader`: text requests within the
client's frame size and its message budget, access/message_budget.py).

The reader closes a connection itself for the two reasons it owns (1009 frame too big,
1008 over the message budget for longer than RATE_LIMIT_CLOSE_AFTER); everything else
it returns to the session: a request's text, an error to send back, or the end. This
module never interprets a request and never reads uvicorn's internals except through
server/connection.py's `ServerConnection`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from stock_gateway.access.message_budget import MessageBudget
from stock_gateway.client_requests import ProtocolError
from stock_gateway.delivery.sockets import FrameWriter
from stock_gateway.protocol import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    Frame,
)
from stock_gateway.runtime.logs import get_logger
from stock_gateway.server.connection import ServerConnection
from stock_gateway.server.uvicorn_protocols import FAST_PATH_FLAGS
from stock_gateway.settings import Settings

logger = get_logger(__name__)


class AsgiClientSocket:
    """A Starlette WebSocket as the hub's `ClientSocket`: ASGI sends, which work under
    any server; `abort` needs our server protocol and is a no-op elsewhere."""

    def __init__(self, websocket: WebSocket, connection: ServerConnection | None) -> None:
        self._websocket = websocket
        self._connection = connection

    async def send(self, frame: Frame) -> None:
        try:
            await self._websocket.send_text(frame.text)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionError("client socket closed") from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionError("client socket closed") from exc

    def abort(self) -> None:
        if self._connection is not None:
            self._connection.abort()

    def queued_bytes(self) -> int:
        return self._connection.queued_bytes() if self._connection is not None else 0


def _size_in_bytes(text: str) -> int:
    """UTF-8 length, encoding only when the character count leaves it in doubt."""
    return len(text) if text.isascii() else len(text.encode())


@dataclass(frozen=True)
class Ended:
    """The client left, or was closed by the reader (with this code, when known)."""

    code: int | None


class RequestReader:
    """A client's frames as request texts, within its size and message-rate limits:
    each `next()` is a text to handle, an error to send back, or the end."""

    def __init__(self, websocket: WebSocket, settings: Settings) -> None:
        self._websocket = websocket
        self._settings = settings
        self._budget = MessageBudget(
            settings.client_message_rate,
            settings.client_message_burst,
            settings.rate_limit_close_after,
        )

    async def next(self) -> str | ProtocolError | Ended:
        settings, websocket = self._settings, self._websocket
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return Ended(message.get("code"))
        text, data = message.get("text"), message.get("bytes")
        size = _size_in_bytes(text) if text is not None else len(data or b"")
        if size > settings.max_message_size:
            reason = f"message over {settings.max_message_size} bytes"
            await websocket.close(CLOSE_MESSAGE_TOO_BIG, reason)
            return Ended(CLOSE_MESSAGE_TOO_BIG)
        verdict = self._budget.spend(time.monotonic())
        if verdict == "close":
            await websocket.close(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
            return Ended(CLOSE_POLICY_VIOLATION)
        if verdict == "refuse":
            return ProtocolError(
                "rate_limited",
                f"over {settings.client_message_rate:g} messages per second; message ignored",
            )
        if text is None:
            return ProtocolError(
                "invalid_message", "binary frames are not supported; send JSON text"
            )
        return str(text)


class FastPath:
    """Whether a client's frames go straight to its transport: where the server allows
    it (our protocol class, no permessage-deflate) unless DIRECT_WRITES=false; says once,
    loudly, when it does not."""

    def __init__(self, settings: Settings) -> None:
        self._enabled = settings.direct_writes
        self._warned = False

    def writer(self, connection: ServerConnection | None) -> FrameWriter | None:
        if not self._enabled:
            return None
        writer = connection.frame_writer() if connection is not None else None
        if writer is None and not self._warned:
            self._warned = True
            why = (
                "this server does not run the gateway's WebSocket protocol"
                if connection is None
                else "the client negotiated permessage-deflate"
            )
            logger.warning(
                "fast path off: %s, so clients get plain ASGI sends (2-3x the CPU per "
                "update); run `python gateway.py`, or uvicorn with %s",
                why, FAST_PATH_FLAGS,
            )  # fmt: skip
        return writer
