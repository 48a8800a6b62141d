"""A WebSocket client that subscribes and then never reads: the slow consumer.

A raw socket with a tiny receive buffer, so the server's send path fills within
seconds instead of hiding behind megabytes of loopback buffering.
"""

from __future__ import annotations

import asyncio
import socket

from bench.attacks import OP_TEXT, client_frame, ws_handshake


async def open_never_reading_client(
    host: str, port: int, message: str, *, receive_buffer: int = 4096, local: str = "127.0.0.1"
) -> socket.socket:
    """Handshake on /ws, send one text frame, and hand back the socket unread."""
    sock = await ws_handshake(host, port, local, receive_buffer=receive_buffer)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, masked_text_frame(message))
    except BaseException:
        sock.close()
        raise
    return sock


def masked_text_frame(message: str) -> bytes:
    """One client-to-server text frame (clients must mask, RFC 6455 5.3)."""
    return client_frame(OP_TEXT, message.encode())
