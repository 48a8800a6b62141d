"""What delivery needs of a client's socket: `ClientSocket` (awaited sends, by the
client's own writer task) and `FrameWriter` (the fast path's non-blocking writes of
whole WebSocket frames, from the broadcaster), and how a slow consumer's socket is
closed. endpoints/ws_io.py and endpoints/sse.py provide them over ASGI and the server's
connection (server/)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from stock_gateway.protocol import CLOSE_GRACE_SECONDS, CLOSE_TRY_AGAIN_LATER, Frame


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


async def close_slow_consumer(socket: ClientSocket) -> None:
    """1013 to a client too far behind, or a reset. A client this far behind may not
    read our close frame for a long time (or ever), and its unread bytes hold memory.
    One that is still reading gets the 1013 close within the grace period; one that is
    not gets a reset after it."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_SECONDS):
            await socket.close(CLOSE_TRY_AGAIN_LATER, "slow consumer")
            await asyncio.sleep(CLOSE_GRACE_SECONDS)  # cancelled once it disconnects
    except (TimeoutError, ConnectionError):
        pass
    finally:
        socket.abort()
