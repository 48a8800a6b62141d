"""What delivery needs of a client's socket: `ClientSocket` (awaited sends, by the
client's own writer task) and `FrameWriter` (the fast path's non-blocking writes of
whole WebSocket frames, from the broadcaster). endpoints/ws_io.py and endpoints/sse.py
provide them over ASGI and the server's connection (server/)."""

from __future__ import annotations

from typing import Protocol

from stock_gateway.protocol import Frame


class ClientSocket(Protocol):
    """What the hub needs from a client's WebSocket; send and close raise ConnectionError."""

    async def send(self, frame: Frame) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...

    def queued_bytes(self) -> int: ...


class FrameWriter(Protocol):
    """A client's socket as a byte stream we may write whole WebSocket frames to.

    The fast path: writing a pre-built frame costs one buffered, non-blocking write,
    with no task switch. `ready()` is false while the socket's send buffer is full or
    the connection is closing; `wait_ready()` raises ConnectionError once it is gone.
    """

    def ready(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def wait_ready(self) -> None: ...
