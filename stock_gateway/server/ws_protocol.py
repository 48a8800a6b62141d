"""The WebSocket half of the server's protocols: uvicorn's sans-I/O WebSocket protocol,
subclassed as `GatewayWebSocketProtocol`, with the limits that live below the app.

`GatewayHttpProtocol` (uvicorn_protocols.py) upgrades to it. Every incoming frame of any
kind (pings, pongs and continuation frames included) is charged to a budget (1008 past
it); output the peer leaves unread is capped, checked after every pong and every write
of the fast path (the connection is aborted at once, its buffers released); the
handshake has a deadline.

After the 1008 close frame the connection waits for the peer's close frame (the closing
handshake), reading and ignoring what comes first within LINGER_SECONDS and LINGER_BYTES,
so that the kernel never answers those late frames with a reset that overtakes the close
frame on the peer's side. For each accepted handshake the app finds a `ServerConnection`
(server/connection.py) in the ASGI scope.

Like uvicorn_protocols.py, it reads uvicorn's attributes (the server/ package is their
only reader) and must never parse application messages.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.token_bucket import TokenBucket
from stock_gateway.server.connection import SCOPE_EXTENSION, ServerConnection
from stock_gateway.server.guard import guard_in

logger = get_logger(__name__)

WS_IMPORT_PATH = "stock_gateway.server.ws_protocol:GatewayWebSocketProtocol"
WRITE_BUFFER_HIGH = 4_096  # bytes in the transport before a client counts as stalled
# A peer that reads sees our close frame within a round trip and answers it; one still
# sending past either bound is flooding and is cut at once.
LINGER_SECONDS = 5.0  # a peer on a busy machine may take a while to read our close frame
LINGER_BYTES = 65_536


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with frame and output limits, exposing a
    `ServerConnection` to the app."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard_in(app_state)
        limits = self._guard.limits
        self._frame_budget = TokenBucket(limits.frame_rate, limits.frame_burst, self.loop.time())
        self._failed = False
        self._read_after_failing = 0
        self._deadline: asyncio.TimerHandle | None = None
        # websockets logs every header and frame at DEBUG: tokens and cookies included.
        self.conn.debug = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The kernel's send buffer absorbs a healthy client's bursts; what waits above
        # it belongs in the client's outbox (shared frames, conflated), not in the
        # transport, where each queued write of a ~100-byte frame costs far more memory.
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        timeout = self._guard.limits.handshake_timeout
        self._deadline = self.loop.call_later(timeout, self._handshake_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._failed:  # waiting for the peer's close frame (see _fail), within bounds
            self._read_after_failing += len(data)
            if self._read_after_failing > LINGER_BYTES:
                self.transport.abort()
                return
        super().data_received(data)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # the handshake is valid and the app is about to run
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[SCOPE_EXTENSION] = ServerConnection(self, self._check_unread_output)

    # Every incoming frame is charged to the connection's frame budget first.

    def handle_text(self, event: Frame) -> None:
        if self._charge():
            super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        if self._charge():
            super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self._charge():
            super().handle_cont(event)

    def handle_ping(self) -> None:
        if self._charge():
            super().handle_ping()  # writes the pong websockets queued
            self._check_unread_output()

    def handle_pong(self, event: Frame) -> None:
        if self._charge():
            super().handle_pong(event)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_if_unread()  # a peer that stopped answering will not read a close frame

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # The parsed handshake (request and response, ~4 KiB with their headers)
            # is never read again; the scope keeps what the app needs.
            self.request = self.response = None  # type: ignore[assignment]
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A refusal (401, 403, 429) is an answered handshake: without this, uvicorn
            # logs "returned without completing handshake" at ERROR for every one, and
            # anyone could fill the error log by knocking with a bad token.
            self.handshake_complete = True
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer closes gracefully, which waits for a peer that may never
            # read: abort instead if our output is still unread by then.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_or_abort)

    def _close_or_abort(self) -> None:
        self._abort_if_unread()
        self.transport.close()

    def _charge(self) -> bool:
        if self._failed:
            return False
        if self._frame_budget.allow(self.loop.time()):
            return True
        self._guard.count("frame_rate")
        logger.warning("closing a client over its frame budget client=%s", _peer(self.client))
        self._fail(1008, "frame rate limit exceeded")
        return False

    def _check_unread_output(self) -> None:
        if self.transport.get_write_buffer_size() > self._guard.limits.max_unread_output:
            self._guard.count("unread_output")
            logger.warning("aborting a client that does not read client=%s", _peer(self.client))
            self._failed = True
            self.transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        """Close with `code` by the closing handshake, not by closing the socket at once:
        frames the peer sent before it read our close frame would reach a closed socket,
        and the reset the kernel answers with can overtake the close frame. Nor by a
        half-close: a client (aiohttp's) whose transport sees our FIN before it replies
        reports 1006. Meanwhile its frames are parsed and ignored; the reply closes the
        connection (uvicorn's handle_close, as close_timer is set); a peer that never
        replies, or sends LINGER_BYTES first, is aborted."""
        self._failed = True
        if self.conn.state is not State.OPEN:  # our close frame went out already
            self.transport.abort()
            return
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.close_sent = True
        self._abort_if_unread()
        if not self.transport.is_closing():
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def _abort_if_unread(self) -> None:
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()

    def _handshake_too_slow(self) -> None:
        self._deadline = None
        if not self.handshake_complete and not self.transport.is_closing():
            self._guard.count("handshake_timeout")
            self.transport.abort()


def _peer(client: tuple[str, int] | None) -> str:
    return client[0] if client else "-"
