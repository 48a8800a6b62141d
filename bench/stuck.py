"""A WebSocket client that subscribes and then never reads: the slow consumer.

A raw socket with a tiny receive buffer, so the server's send path fills within
seconds instead of hiding behind megabytes of loopback buffering.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct


async def open_never_reading_client(
    host: str, port: int, message: str, *, receive_buffer: int = 4096
) -> socket.socket:
    """Handshake on /ws, send one text frame, and hand back the socket unread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                raise ConnectionError("the server closed the connection during the handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {response.splitlines()[0]!r}")
        await loop.sock_sendall(sock, masked_text_frame(message))
    except BaseException:
        sock.close()
        raise
    return sock


def masked_text_frame(message: str) -> bytes:
    """One client-to-server text frame (clients must mask, RFC 6455 5.3)."""
    payload = message.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    if len(payload) < 126:
        header = struct.pack("!BB", 0x81, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    return header + mask + masked
