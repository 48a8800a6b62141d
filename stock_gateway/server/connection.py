"""One client's connection below the ASGI interface: `ServerConnection`, which the
gateway's WebSocket protocol puts in the ASGI scope (`scope["extensions"]
["gateway.connection"]`) for each accepted handshake, and `HttpConnection`, which its
HTTP protocol puts in the scope of each plain request (for `/stream`).

Through either the app can `abort()` the socket, cap the kernel's send buffer and read
how much output is queued; through a `ServerConnection` also write pre-built frames
straight to the transport (`frame_writer()`, the fast path, unless an extension such
as permessage-deflate was negotiated) and see whether the peer `stalled()`. Under any
other server or protocol they are absent (`server_connection()` and
`http_connection()` are None) and the app falls back to plain ASGI sends. It reads
uvicorn's sans-I/O protocol's attributes (pinned with the rest of this package) and
never parses application messages.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Callable, Mapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from stock_gateway.server.progress import ReadProgressWatch

SCOPE_EXTENSION = "gateway.connection"


class DirectFrameWriter:
    """The fast path: whole, pre-built frames written straight to the transport.

    Server frames are unmasked, so one encoded frame can be written as-is to every
    subscriber. It never writes after a close frame went out or once the transport
    started closing; `ready()` is false while the send buffer is over its high-water
    mark, and `wait_ready()` raises ConnectionError once the connection is gone. After
    each write `after_write` runs: the protocol's check of the output the peer leaves
    unread, so one huge write to a peer that does not read cuts it at once.
    """

    def __init__(
        self, protocol: WebSocketsSansIOProtocol, after_write: Callable[[], None] | None = None
    ) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._writable = protocol.writable
        self._after_write = after_write

    def ready(self) -> bool:
        return (
            self._writable.is_set()
            and not self._protocol.close_sent
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        self._transport.write(data)
        # Below the high-water mark (writable still set) nothing is left unread to speak
        # of: the check costs a call per frame on the hot path only when it can matter.
        if self._after_write is not None and not self._writable.is_set():
            self._after_write()

    async def wait_ready(self) -> None:
        await self._writable.wait()
        if self._protocol.close_sent or self._transport.is_closing():
            raise ConnectionError("client socket closed")


class SocketHandle:
    """What the app may do with a client's socket below the ASGI interface, whatever
    the protocol on it: abort it, cap its kernel send buffer, read what is queued."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent bytes: a peer that never reads
        would otherwise keep a graceful close (and its buffered bytes) pending forever."""
        self._transport.abort()

    def limit_send_buffer(self, size: int) -> None:
        """Cap the kernel's send buffer for this socket (SO_SNDBUF), so a stalled
        client holds little kernel memory."""
        sock = self._socket()
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def queued_bytes(self) -> int:
        """Output not yet taken by the peer: the transport's buffer plus the kernel's
        send queue for the socket (Linux SIOCOUTQ)."""
        queued = self._transport.get_write_buffer_size()
        sock = self._socket()
        if sock is not None and sock.fileno() >= 0:
            try:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                queued += struct.unpack("i", raw)[0]
            except OSError:
                pass
        return queued

    def _socket(self) -> socket.socket | None:
        sock: socket.socket | None = self._transport.get_extra_info("socket")
        return sock


class ServerConnection(SocketHandle):
    """One accepted WebSocket: the socket's handle, the fast path and its stall."""

    def __init__(
        self, protocol: WebSocketsSansIOProtocol, after_write: Callable[[], None] | None = None
    ) -> None:
        super().__init__(protocol.transport)
        self._protocol = protocol
        self._after_write = after_write

    def frame_writer(self) -> DirectFrameWriter | None:
        """A writer for pre-built frames, or None when a negotiated extension forbids it."""
        if self._protocol.conn.extensions:
            return None
        return DirectFrameWriter(self._protocol, self._after_write)

    def stalled(self) -> bool:
        """The peer is not reading: the send buffer is above its high-water mark."""
        return not self._protocol.writable.is_set()


class HttpConnection(SocketHandle):
    """One HTTP connection: its socket's handle for a response that streams
    (`/stream`), and the write deadline the protocol keeps for every response: a
    transport whose writes stay paused (the peer does not read) for `write_timeout`
    is aborted, not closed, as a graceful close would wait for the unread bytes.
    The same happens, whatever the rate, to a peer that acknowledged nothing of what
    is pending to it for `write_timeout` (progress.py): for the socket's whole life,
    so also once it carries a WebSocket (`/ws`, `/`)."""

    def __init__(
        self, transport: asyncio.Transport, write_timeout: float, on_timeout: Callable[[], None]
    ) -> None:
        super().__init__(transport)
        self._write_timeout = write_timeout
        self._on_timeout = on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._progress = ReadProgressWatch(
            transport, self.queued_bytes, write_timeout, self._too_slow
        )

    def writes_paused(self) -> None:
        if self._deadline is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._write_timeout, self._too_slow)

    def writes_resumed(self) -> None:
        """The peer read (or the connection is gone): no deadline."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._progress.stop()
        self._on_timeout()
        self._transport.abort()


def server_connection(scope: Mapping[str, Any]) -> ServerConnection | None:
    """The connection handle our protocol put in the scope, or None under another server."""
    connection = scope.get("extensions", {}).get(SCOPE_EXTENSION)
    return connection if isinstance(connection, ServerConnection) else None


def http_connection(scope: Mapping[str, Any]) -> HttpConnection | None:
    """An HTTP request's connection handle, or None under another server."""
    connection = (scope.get("extensions") or {}).get(SCOPE_EXTENSION)
    return connection if isinstance(connection, HttpConnection) else None
