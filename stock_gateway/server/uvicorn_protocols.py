"""Everything that depends on uvicorn's internals, behind one small interface.

The gateway's HTTP protocol is uvicorn's httptools protocol, subclassed here as
`GatewayHttpProtocol` and selected by import path (`--http
server.uvicorn_protocols:GatewayHttpProtocol`; `python gateway.py` and the container do this).
It upgrades WebSockets to `GatewayWebSocketProtocol` (uvicorn's websockets-sansio
protocol, subclassed) unless another `--ws` implementation was chosen. Together they
enforce the limits that live below the application (a `ConnectionGuard`, built by the
lifespan from the settings and handed over in uvicorn's lifespan state):

- every socket: a cap on open sockets below the open-file limit, a cap on sockets per
  peer address that have not completed their request, a deadline for the request
  headers and the WebSocket handshake (408), and a cap on request-line plus header
  bytes (431);
- every HTTP response: a write deadline. A peer that leaves the transport's buffer
  over its high-water mark (writes paused) for `write_timeout` (SLOW_CONSUMER_TIMEOUT)
  is aborted, so that a response blocked on a peer that never reads (an SSE stream,
  above all) ends, and with it whatever the app holds for it;
- every WebSocket: a budget of incoming frames of any kind (pings, pongs and
  continuation frames included; 1008 past it), and a cap on output the peer leaves
  unread, checked after every pong and every write of the fast path (the connection is
  aborted at once, its buffers released).

After the 1008 close frame the connection waits for the peer's close frame (the closing
handshake), reading and ignoring what comes first within LINGER_SECONDS and LINGER_BYTES,
so that the kernel never answers those late frames with a reset that overtakes the close
frame on the peer's side.

For each accepted handshake the app finds a `ServerConnection` (server/connection.py)
in the ASGI scope, its handle on the connection below ASGI (the fast path among it);
for each plain HTTP request an `HttpConnection` (abort, send-buffer cap, queued bytes).

This package is the only place that reads uvicorn's attributes; the version range it was
written against is pinned in setup.cfg and tests/test_server_protocol.py fails loudly
if the fast path stops engaging. It must never parse application messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.token_bucket import TokenBucket
from stock_gateway.server.connection import SCOPE_EXTENSION, HttpConnection, ServerConnection
from stock_gateway.server.guard import ConnectionGuard

logger = get_logger(__name__)

STATE_KEY = "gateway.connection_guard"
HTTP_IMPORT_PATH = "stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol"
WS_IMPORT_PATH = "stock_gateway.server.uvicorn_protocols:GatewayWebSocketProtocol"
# What to tell an operator whose server command cannot use the fast path.
FAST_PATH_FLAGS = f"--http {HTTP_IMPORT_PATH} --ws-per-message-deflate false"
_FALLBACK_GUARD = ConnectionGuard()  # before the lifespan hands over the real one
WRITE_BUFFER_HIGH = 4_096  # bytes in the transport before a client counts as stalled
# A peer that reads sees our close frame within a round trip and answers it; one still
# sending past either bound is flooding and is cut at once.
LINGER_SECONDS = 5.0  # a peer on a busy machine may take a while to read our close frame
LINGER_BYTES = 65_536


def _guard(app_state: Mapping[str, Any]) -> ConnectionGuard:
    guard = app_state.get(STATE_KEY)
    return guard if isinstance(guard, ConnectionGuard) else _FALLBACK_GUARD


def _response(status: str, body: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}"
    ).encode()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with socket, deadline and header limits."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if self.ws_protocol_class is WebSocketsSansIOProtocol:  # the default, "auto"
            self.ws_protocol_class = GatewayWebSocketProtocol
        self._guard = _guard(app_state)
        self._header_bytes = 0
        self._in_headers = True
        self._deadline: asyncio.TimerHandle | None = None
        self._pending_peer: str | None = None
        self._trusted = False
        self._handle: HttpConnection  # once connected

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._handle = HttpConnection(
            transport, self._guard.limits.write_timeout, self._guard.count_write_timeout
        )
        guard, peer = self._guard, self.client[0] if self.client else ""
        self._trusted = bool(peer) and is_trusted_proxy(peer, self.config)
        refusal = guard.refuse_socket(len(self.connections), peer, self._trusted)
        if refusal is not None:
            transport.write(_response("503 Service Unavailable", refusal))
            transport.close()
            return
        self._begin_request()

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self._guard.limits.max_request_header_bytes:
                self._guard.count("header_too_large")
                self.transport.write(_response("431 Request Header Fields Too Large", "too big"))
                self._stop(abort=False)
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        cast(dict[str, Any], self.scope)["extensions"] = {SCOPE_EXTENSION: self._handle}
        self._in_headers = True
        self._header_bytes = 0
        # A request after the first one on a kept-alive connection has the same
        # deadline and counts the same against its address, or a client could send one
        # request and then trickle the next one forever.
        if self._deadline is None and not self.transport.is_closing():
            peer = self.client[0] if self.client else ""
            counted = self._pending_peer is not None or not peer or self._trusted
            if not counted and self._guard.refuse_socket(0, peer, self._trusted) is not None:
                self._stop(abort=True)
                return
            self._begin_request()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()  # the whole request, body included, is in
        self._release_pending()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()  # the WebSocket protocol keeps its own handshake deadline
        self._handle.writes_resumed()  # and its own limit on unread output
        self._release_pending()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._handle.writes_resumed()
        self._release_pending()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._handle.writes_paused()

    def resume_writing(self) -> None:
        self._handle.writes_resumed()
        super().resume_writing()

    def _begin_request(self) -> None:
        peer = self.client[0] if self.client else ""
        if peer and not self._trusted and self._pending_peer is None:
            self._pending_peer = peer
            self._guard.pending[peer] += 1
        self._deadline = self.loop.call_later(self._guard.limits.handshake_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._guard.count("request_timeout")
            if self._in_headers:
                self.transport.write(_response("408 Request Timeout", "request too slow"))
            self._stop(abort=False)

    def _stop(self, *, abort: bool) -> None:
        self._in_headers = False  # nothing more is parsed
        self._cancel_deadline()
        self._release_pending()
        self.transport.pause_reading()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _release_pending(self) -> None:
        if self._pending_peer is not None:
            self._guard.release_pending(self._pending_peer)
            self._pending_peer = None


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
        self._guard = _guard(app_state)
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


_TRUST_RULES: dict[str, _TrustedHosts] = {}


def is_trusted_proxy(peer: str, config: Config) -> bool:
    """uvicorn's own rule for `--forwarded-allow-ips`: a proxy whose `X-Forwarded-For`
    names the real client, so per-peer limits do not apply to it."""
    key = repr(config.forwarded_allow_ips)
    rule = _TRUST_RULES.get(key)
    if rule is None:
        rule = _TRUST_RULES[key] = _TrustedHosts(config.forwarded_allow_ips)
    return peer in rule
