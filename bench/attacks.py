"""Hostile clients, on loopback only: the attacks the gateway must refuse or absorb.

Each attack is a coroutine over raw sockets (or aiohttp where a real client library is
the point), bound to a chosen local address (127.0.0.x emulates distinct clients), and
bounded in time or count. They report what the server did (a status, a close code,
how long it took); judging that is the caller's job (tests/abuse/test_abuse_*.py and
`python -m bench --scenario abuse`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp

OP_CONT, OP_TEXT, OP_PING, OP_PONG = 0x0, 0x1, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One client-to-server frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


async def tcp_connect(
    host: str, port: int, local: str, *, receive_buffer: int = 0
) -> socket.socket:
    """A non-blocking TCP socket from `local` (e.g. 127.0.0.3) to host:port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        sock.bind((local, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def read_status(sock: socket.socket, timeout: float = 5.0) -> int | None:
    """The HTTP status of the response on `sock`, or None if it closed without one."""
    loop = asyncio.get_running_loop()
    response = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n" not in response:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                response += chunk
    except (TimeoutError, ConnectionError):
        pass
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


async def ws_handshake(
    host: str, port: int, local: str, *, receive_buffer: int = 0, path: str = "/ws"
) -> socket.socket:
    """A raw WebSocket connection from `local`, past the handshake (ConnectionError if
    refused); the caller then sends whatever frames it likes."""
    sock = await tcp_connect(host, port, local, receive_buffer=receive_buffer)
    loop = asyncio.get_running_loop()
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in response:
                chunk = await loop.sock_recv(sock, 1)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {response.splitlines()[0]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class FloodResult:
    frames_sent: int
    seconds: float  # until the server cut the connection, or the time limit
    cut_by_server: bool


async def frame_flood(
    sock: socket.socket, batch: tuple[bytes, int], *, seconds: float, first: bytes = b""
) -> FloodResult:
    """Send `first`, then `batch` (bytes holding that many frames) over and over without
    reading, until the server cuts the connection or `seconds` pass."""
    loop = asyncio.get_running_loop()
    frames, per_batch = batch
    sent, started = 0, time.monotonic()
    try:
        if first:
            await loop.sock_sendall(sock, first)
        async with asyncio.timeout(seconds):
            while True:
                await loop.sock_sendall(sock, frames)
                sent += per_batch
    except TimeoutError:
        return FloodResult(sent, time.monotonic() - started, False)
    except OSError:
        return FloodResult(sent, time.monotonic() - started, True)


def ping_batch(count: int = 200, payload: bytes = b"x" * 125) -> tuple[bytes, int]:
    return b"".join(client_frame(OP_PING, payload) for _ in range(count)), count


def pong_batch(count: int = 200) -> tuple[bytes, int]:
    return b"".join(client_frame(OP_PONG, b"p") for _ in range(count)), count


def empty_continuations(count: int = 500) -> tuple[bytes, int]:
    return b"".join(client_frame(OP_CONT, b"", fin=False) for _ in range(count)), count


async def huge_header(host: str, port: int, local: str, total: int) -> tuple[int | None, float]:
    """A request whose one header value grows to `total` bytes; (status, seconds)."""
    sock = await tcp_connect(host, port, local)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    chunk = b"a" * 65536
    try:
        await loop.sock_sendall(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        async with asyncio.timeout(30):
            while sent < total:
                await loop.sock_sendall(sock, chunk)
                sent += len(chunk)
            await loop.sock_sendall(sock, b"\r\n\r\n")
    except (OSError, TimeoutError):
        pass  # the server stopped reading or cut us off: what we want to see
    try:
        return await read_status(sock), time.monotonic() - started
    finally:
        sock.close()


async def slowloris(
    host: str, port: int, local: str, *, interval: float, limit: float
) -> tuple[int | None, float]:
    """A request sent one byte every `interval` seconds; (status, seconds until the
    server answered or closed; `limit` if it never did)."""
    sock = await tcp_connect(host, port, local)
    loop = asyncio.get_running_loop()
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: " + b"z" * 10_000
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            for byte in request:
                await loop.sock_sendall(sock, bytes((byte,)))
                try:
                    async with asyncio.timeout(interval):
                        data = await loop.sock_recv(sock, 4096)
                except TimeoutError:
                    continue
                parts = data.split(b" ", 2)
                status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                return status, time.monotonic() - started
    except TimeoutError:
        return None, limit
    except OSError:
        pass
    finally:
        sock.close()
    return None, time.monotonic() - started


async def open_idle_sockets(host: str, port: int, local: str, count: int) -> list[socket.socket]:
    """`count` TCP connections that never send a byte (those refused are closed)."""
    opened: list[socket.socket] = []
    for _ in range(count):
        try:
            opened.append(await tcp_connect(host, port, local))
        except OSError:
            break
    return opened


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed or reset this socket (reading past any response it
    wrote first, such as a 408 or a 503)."""
    try:
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True  # reset
    return True  # end of stream


async def http_hammer(
    base_url: str, local: str, path: str, *, concurrency: int, statuses: Counter[int]
) -> None:
    """`concurrency` kept-alive connections from `local` requesting `path` back to back,
    forever (the caller cancels it); each response's status is counted in `statuses`, a
    429's `Retry-After` as key -1 when it is missing."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            while True:
                async with session.get(base_url + path) as response:
                    await response.read()
                    statuses[response.status] += 1
                    if response.status == 429 and "Retry-After" not in response.headers:
                        statuses[-1] += 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
