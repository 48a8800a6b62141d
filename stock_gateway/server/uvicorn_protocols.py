"""Everything that depends on uvicorn's internals, behind one small interface: the HTTP
half here, the WebSocket half in ws_protocol.py.

The gateway's HTTP protocol is uvicorn's httptools protocol, subclassed here as
`GatewayHttpProtocol` and selected by import path (`--http
stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol`; `python gateway.py` and the
container do this). It upgrades WebSockets to `GatewayWebSocketProtocol`
(ws_protocol.py: frame budget, unread output, the closing handshake) unless another
`--ws` implementation was chosen. Together they enforce the limits that live below the
application (a `ConnectionGuard`, built by the lifespan from the settings and handed
over in uvicorn's lifespan state):

- every socket: a cap on open sockets below the open-file limit, a cap on sockets per
  peer address that have not completed their request, a deadline for the request
  headers and the WebSocket handshake (408), and a cap on request-line plus header
  bytes (431);
- every HTTP response: a write deadline. A peer that leaves the transport's buffer
  over its high-water mark (writes paused) for `write_timeout` (SLOW_CONSUMER_TIMEOUT)
  is aborted, so that a response blocked on a peer that never reads (an SSE stream,
  above all) ends, and with it whatever the app holds for it;
- every WebSocket: ws_protocol.py.

For each plain HTTP request the app finds an `HttpConnection` (server/connection.py:
abort, send-buffer cap, queued bytes) in the ASGI scope.

This package is the only place that reads uvicorn's attributes; the version range it was
written against is pinned in setup.cfg and tests/server/test_server_protocol.py fails loudly
if the fast path stops engaging. It must never parse application messages.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from stock_gateway.server.connection import SCOPE_EXTENSION, HttpConnection
from stock_gateway.server.guard import guard_in
from stock_gateway.server.ws_protocol import GatewayWebSocketProtocol

HTTP_IMPORT_PATH = "stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol"
# What to tell an operator whose server command cannot use the fast path.
FAST_PATH_FLAGS = f"--http {HTTP_IMPORT_PATH} --ws-per-message-deflate false"


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
        self._guard = guard_in(app_state)
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


_TRUST_RULES: dict[str, _TrustedHosts] = {}


def is_trusted_proxy(peer: str, config: Config) -> bool:
    """uvicorn's own rule for `--forwarded-allow-ips`: a proxy whose `X-Forwarded-For`
    names the real client, so per-peer limits do not apply to it."""
    key = repr(config.forwarded_allow_ips)
    rule = _TRUST_RULES.get(key)
    if rule is None:
        rule = _TRUST_RULES[key] = _TrustedHosts(config.forwarded_allow_ips)
    return peer in rule
