"""Everything that depends on uvicorn's internals, behind one small interface.

The gateway's WebSocket protocol is uvicorn's websockets-sansio protocol, subclassed
here as `GatewayWebSocketProtocol` and selected by import path
(`--ws server_protocol:GatewayWebSocketProtocol`; `python gateway.py` and the
container do this). For each accepted handshake it puts a `ServerConnection` into the
ASGI scope (`scope["extensions"]["gateway.connection"]`), through which the app can:

- write pre-built WebSocket frames straight to the transport (`frame_writer()`: the
  fast path, see README "Fan-out performance"), unless an extension such as
  permessage-deflate was negotiated, which needs every frame transformed;
- `abort()` a connection whose peer stopped reading, and see whether it `stalled()`;
- cap the kernel's send buffer for the socket (`limit_send_buffer()`).

Under any other server or protocol the extension is absent and the app falls back to
plain ASGI sends. This module is the only place that reads uvicorn's attributes; the
version range it was written against is pinned in setup.cfg and
tests/test_server_protocol.py fails loudly if the fast path stops engaging. It must
never parse application messages or know about symbols.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

SCOPE_EXTENSION = "gateway.connection"
IMPORT_PATH = "server_protocol:GatewayWebSocketProtocol"
# What to tell an operator whose server command cannot use the fast path.
FAST_PATH_FLAGS = f"--ws {IMPORT_PATH} --ws-per-message-deflate false"


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, exposing a `ServerConnection` to the app."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # the handshake is valid and the app is about to run
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[SCOPE_EXTENSION] = ServerConnection(self)


class DirectFrameWriter:
    """The fast path: whole, pre-built frames written straight to the transport.

    Server frames are unmasked, so one encoded frame can be written as-is to every
    subscriber. It never writes after a close frame went out or once the transport
    started closing; `ready()` is false while the send buffer is over its high-water
    mark, and `wait_ready()` raises ConnectionError once the connection is gone.
    """

    def __init__(self, protocol: GatewayWebSocketProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._writable = protocol.writable

    def ready(self) -> bool:
        return (
            self._writable.is_set()
            and not self._protocol.close_sent
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def wait_ready(self) -> None:
        await self._writable.wait()
        if self._protocol.close_sent or self._transport.is_closing():
            raise ConnectionError("client socket closed")


class ServerConnection:
    """What the app may do with one client's connection below the ASGI interface."""

    def __init__(self, protocol: GatewayWebSocketProtocol) -> None:
        self._protocol = protocol

    def frame_writer(self) -> DirectFrameWriter | None:
        """A writer for pre-built frames, or None when a negotiated extension forbids it."""
        if self._protocol.conn.extensions:
            return None
        return DirectFrameWriter(self._protocol)

    def stalled(self) -> bool:
        """The peer is not reading: the send buffer is above its high-water mark."""
        return not self._protocol.writable.is_set()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent bytes: a peer that never reads
        would otherwise keep a graceful close (and its buffered bytes) pending forever."""
        self._protocol.transport.abort()

    def limit_send_buffer(self, size: int) -> None:
        """Cap the kernel's send buffer for this socket (SO_SNDBUF), so a stalled
        client holds little kernel memory."""
        sock: socket.socket | None = self._protocol.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def server_connection(scope: Mapping[str, Any]) -> ServerConnection | None:
    """The connection handle our protocol put in the scope, or None under another server."""
    connection = scope.get("extensions", {}).get(SCOPE_EXTENSION)
    return connection if isinstance(connection, ServerConnection) else None
