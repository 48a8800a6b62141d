"""Whether a peer is still reading, whatever the rate we write at: `ReadProgressWatch`.

The write deadline (connection.py) fires only once the transport's buffer is over its
high-water mark, and the outbox's slow-consumer timer only once the outbox is full: at
an ordinary rate a peer that never reads can take minutes to get there, while the kernel
holds what it left unread and the app holds its symbols and its per-address slot. This
watch asks the kernel instead: output is pending to the peer (the transport's buffer
plus the socket's send queue, SIOCOUTQ) and the peer acknowledged no byte of it
(TCP_INFO's `tcpi_bytes_acked`) for `timeout` seconds: it calls `on_stall`.

It samples every `timeout / SAMPLES` seconds, so a stalled peer is found between
`timeout` and `timeout * (1 + 3 / SAMPLES)` after it stopped. A peer that reads at
all, however slowly, acknowledges bytes and is never taken for stalled (keeping up is
the outbox's business). Where the kernel does not tell (not Linux, not TCP) the watch
does nothing. It stops by itself once the transport is closing.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

SAMPLES = 4  # per timeout
# struct tcp_info (linux/tcp.h): __u64 tcpi_bytes_acked at offset 120, since Linux 4.1.
BYTES_ACKED = struct.Struct("=Q")
BYTES_ACKED_OFFSET = 120
TCP_INFO_SIZE = BYTES_ACKED_OFFSET + BYTES_ACKED.size


def bytes_acked(sock: socket.socket) -> int | None:
    """How many bytes the peer has acknowledged on this TCP socket, or None if unknown."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or sock.fileno() < 0:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < TCP_INFO_SIZE:
        return None
    acked: int = BYTES_ACKED.unpack_from(info, BYTES_ACKED_OFFSET)[0]
    return acked


class ReadProgressWatch:
    def __init__(
        self,
        transport: asyncio.Transport,
        queued_bytes: Callable[[], int],
        timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._queued_bytes = queued_bytes
        self._timeout = timeout
        self._on_stall = on_stall
        self._acked: int | None = None
        self._stalled_since: float | None = None  # loop time: pending, nothing acked since
        self._timer: asyncio.TimerHandle | None = None
        # asyncio's TransportSocket: a socket's read-only face, getsockopt included.
        self._socket: socket.socket | None = transport.get_extra_info("socket")
        if self._socket is not None and bytes_acked(self._socket) is not None:
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout / SAMPLES, self._sample)

    def _sample(self) -> None:
        self._timer = None
        if self._transport.is_closing() or self._socket is None:
            return
        acked = bytes_acked(self._socket)
        now = asyncio.get_running_loop().time()
        if self._queued_bytes() == 0 or acked != self._acked:
            self._acked = acked
            self._stalled_since = None  # nothing pending, or the peer took some of it
        elif self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self._timeout:
            self._on_stall()
            return
        self._schedule()
