"""Clients that subscribe and then never read: the slow consumer, on `/ws` or on
`/stream`, and a way to see from outside what the server's kernel queues for them.

Raw sockets with a tiny receive buffer, so the server's send path fills within
seconds instead of hiding behind megabytes of loopback buffering.
"""

from __future__ import annotations

import asyncio
import socket

from bench.attacks import OP_TEXT, client_frame, tcp_connect, ws_handshake


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


async def open_never_reading_stream(
    host: str, port: int, path: str, *, receive_buffer: int = 4096, local: str = "127.0.0.1"
) -> socket.socket:
    """Send `GET path` (an SSE `/stream?symbols=...`) and hand back the socket unread."""
    sock = await tcp_connect(host, port, local, receive_buffer=receive_buffer)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    except BaseException:
        sock.close()
        raise
    return sock


def send_queues(port: int, remote: str) -> list[int]:
    """The kernel's send queue (bytes) of each established socket on local `port` whose
    peer is `remote` (an IPv4 address), read from /proc/net/tcp: the server's side of
    those connections, seen from outside the server."""
    local_port = f"{port:04X}"
    peer = "".join(f"{int(part):02X}" for part in reversed(remote.split(".")))
    queues: list[int] = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_address, remote_address, state = fields[1], fields[2], fields[3]
            ours = local_address.endswith(":" + local_port) and remote_address.startswith(peer)
            if state == "01" and ours:  # established
                queues.append(int(fields[4].split(":")[0], 16))
    return queues
