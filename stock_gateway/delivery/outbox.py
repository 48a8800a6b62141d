"""One client's delivery: a bounded outbox, conflation, and the writer that drains it.

While the client keeps up and nothing is queued, a frame is written straight to its
socket (`FrameWriter`) from the broadcaster: no task switch, no await. Otherwise
frames wait in a FIFO of at most `limits.frames` frames and `limits.bytes` bytes; once
that is full, price updates are conflated to the newest per symbol. A client that
stays behind too long, or keeps asking while it does not read (twice either bound), is
closed with 1013 (`protocol.CLOSE_TRY_AGAIN_LATER`). A backlog goes out WRITE_CHUNK_BYTES
at a time, so what waits in the server's buffers for a client that is reading stays
far below what it may leave unread (server/).

A client that chose a throttled or batched stream belongs to a `DeliveryGroup`
(pacing.py) whose pacing decides what is due, then hands it here as whole frames
(`emit`).
During one upstream message the broadcaster may `cork` a client, so that its several
updates from that message go out in one write (each still its own WebSocket frame).

This module must never await a client's socket from the caller's task (the broadcaster
must not block), and never decides what a client is subscribed to (the hub does).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass

from stock_gateway.access.entitlements import UNRESTRICTED, Entitlements
from stock_gateway.delivery.client_holdings import ClientHoldings
from stock_gateway.delivery.encoders import Encoder
from stock_gateway.delivery.pacing import Outgoing
from stock_gateway.delivery.sockets import ClientSocket, FrameWriter, close_slow_consumer
from stock_gateway.delivery.stats import FanoutStats
from stock_gateway.protocol import (
    DeliveryOptions,
    Frame,
)
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

# Written at once from a backlog or a cork (more if one frame is larger): well below the
# least MAX_UNREAD_OUTPUT, so a client that reads is never cut for what we wrote at once.
WRITE_CHUNK_BYTES = 16_384


@dataclass(frozen=True)
class OutboxLimits:
    """Every client's outbox bounds: CLIENT_OUTBOX_SIZE, CLIENT_OUTBOX_BYTES and
    SLOW_CONSUMER_TIMEOUT (settings.py holds their defaults)."""

    frames: int
    bytes: int
    slow_consumer_timeout: float


class ClientConnection(ClientHoldings):
    """One client: what it holds (`ClientHoldings`), its dialect's encoder, and a
    bounded outbox drained by its own writer task (the module's docstring). Price
    updates past the FIFO's bounds go to `_latest` (one per symbol, newest wins); the
    writer sends the FIFO first, then those, so updates for one symbol are never
    reordered and memory stays bounded by the number of symbols. Other frames
    (confirmations, errors, histories, batches) always take the FIFO, up to twice
    either bound.
    """

    def __init__(
        self,
        socket: ClientSocket,
        stats: FanoutStats,
        *,
        owner: str = "-",
        address: str = "-",
        entitlements: Entitlements = UNRESTRICTED,
        direct: FrameWriter | None = None,
        limits: OutboxLimits,
        encoder: Encoder,
    ) -> None:
        super().__init__(owner, address, entitlements)
        self.id = str(uuid.uuid4())
        # What its dialect says of each event (chosen by its endpoint): delivery/encoders.py.
        self.encoder = encoder
        self.evicted = False
        self._socket = socket
        self._direct = direct
        self._stats = stats
        self._outbox_size = limits.frames
        self._outbox_bytes = limits.bytes
        self._slow_consumer_timeout = limits.slow_consumer_timeout
        self._frames: deque[Frame] = deque()
        self._latest: dict[str, Frame] = {}
        self._queued = 0  # bytes in _frames and _latest
        self._lag_timer: asyncio.TimerHandle | None = None
        # The writer task (and its wake-up event) exist only once something had to
        # wait: a client that always keeps up never costs a task.
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._writer_started = False
        self._stopped = False
        self.options = DeliveryOptions()
        self._cork: list[bytes] | None = None
        self._corked = 0  # bytes in _cork

    @property
    def dialect(self) -> str:
        """ "ws" (the gateway's protocol), "sse", "finnhub": what /health counts."""
        return self.encoder.name

    @property
    def immediate(self) -> bool:
        """True while price updates go to it one by one as they come: the gateway's
        `price_update`s, not paced (a paced client gets them through its group, a
        dialect of raw trades through its trade group)."""
        return self.encoder.trade_format is None and not self.options.paced

    # -- how it is served: changed only here --------------------------------------------

    def release(self, symbol: str) -> None:
        super().release(symbol)
        self.forget_pending(symbol)

    def set_options(self, options: DeliveryOptions) -> None:
        self.options = options

    @property
    def fast_path(self) -> bool:
        return self._direct is not None

    def queued_bytes(self) -> int:
        """Output the client has not taken yet, in the server's and the kernel's buffers."""
        return self._socket.queued_bytes()

    @property
    def outbox_bytes(self) -> int:
        """Bytes waiting in the outbox, above the server's buffers."""
        return self._queued

    def send(self, frame: Frame) -> None:
        """Send or queue a control frame; never blocks.

        Control frames cannot be conflated, so a client that keeps asking while it
        does not read would queue them without end: past twice the outbox size, in
        frames or in bytes, it is closed as a slow consumer at once.
        """
        direct = self._direct
        if direct is not None and not self._frames and not self._latest and direct.ready():
            direct.write(frame.wire)
            return
        if (
            len(self._frames) >= 2 * self._outbox_size
            or self._queued + len(frame.payload) > 2 * self._outbox_bytes
        ):
            self._evict()
            return
        self._queue(frame)
        self._wake_writer()

    def _queue(self, frame: Frame) -> None:
        self._frames.append(frame)
        self._queued += len(frame.payload)

    def offer_update(self, symbol: str, frame: Frame) -> None:
        """Send or queue a price update, conflating it if the client is behind; never blocks."""
        self._offer(symbol, frame)

    def offer_snapshot(self, symbol: str, frame: Frame) -> None:
        """The last price, at once, as the `price_update` it is (also when paced)."""
        if self.options.paced:
            self.send(frame)
        else:
            self._offer(symbol, frame)

    def cork(self) -> bool:
        """Collect this client's direct writes until `uncork` (False: nothing to cork:
        the client is behind, or not on the fast path)."""
        direct = self._direct
        if self._cork is not None or direct is None:
            return False
        if self._frames or self._latest or not direct.ready():
            return False
        self._cork, self._corked = [], 0
        return True

    def uncork(self) -> None:
        corked, self._cork = self._cork, None
        if corked and self._direct is not None:
            self._direct.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def emit(self, outgoing: Outgoing) -> None:
        """Whole frames from the client's delivery group: one write when the socket takes
        them at once; else queued (single updates conflate, batches wait in order)."""
        if self.evicted:
            return
        direct = self._direct
        if direct is not None and not self._frames and not self._latest and direct.ready():
            wires = [frame.wire for frame in outgoing]
            direct.write(wires[0] if len(wires) == 1 else b"".join(wires))
            return
        for frame in outgoing:
            if frame.kind == "price_update":
                self._offer(frame.symbol, frame)
            else:
                self.send(frame)

    def _offer(self, symbol: str, frame: Frame) -> None:
        direct = self._direct
        if not self._frames and not self._latest:
            if self._cork is not None:
                self._cork.append(frame.wire)
                self._corked += len(frame.wire)
                if self._corked >= WRITE_CHUNK_BYTES:
                    self.uncork()  # the rest of this message goes out as it comes
                return
            if direct is not None and direct.ready():
                direct.write(frame.wire)
                if self._lag_timer is not None:  # it took everything: caught up
                    self._stop_lag_timer()
                return
            self._queue(frame)
        elif (
            not self._latest
            and len(self._frames) < self._outbox_size
            and self._queued < self._outbox_bytes
        ):
            self._queue(frame)
        else:
            replaced = self._latest.get(symbol)
            if replaced is not None:
                self._stats.conflated_updates += 1
                self._queued -= len(replaced.payload)
            self._latest[symbol] = frame
            self._queued += len(frame.payload)
            if self._lag_timer is None and not self.evicted:
                self._lag_timer = asyncio.get_running_loop().call_later(
                    self._slow_consumer_timeout, self._evict
                )
        self._wake_writer()

    def forget_pending(self, symbol: str) -> None:
        """Drop a conflated update for a symbol the client just left."""
        dropped = self._latest.pop(symbol, None)
        if dropped is not None:
            self._queued -= len(dropped.payload)

    def _wake_writer(self) -> None:
        if self._wakeup is None:
            if self._stopped:
                return
            self._wakeup = asyncio.Event()
            self._writer = asyncio.create_task(self._deliver_forever(self._wakeup))
        self._wakeup.set()

    async def stop(self) -> None:
        self._stopped = True
        self._stop_lag_timer()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])

    async def _deliver_forever(self, wakeup: asyncio.Event) -> None:
        drain = self._drain_asgi if self._direct is None else self._drain_direct
        self._writer_started = True
        try:
            while not self.evicted:
                await wakeup.wait()
                wakeup.clear()
                await drain()
                if self._lag_timer is not None and self._direct is not None:
                    # The backlog went into the socket's buffer: caught up once the peer
                    # has read it down, even if no further update ever comes.
                    await self._direct.wait_ready()
                # Caught up only with nothing queued: a client whose buffer drains a
                # little now and then while updates keep arriving is still behind.
                if self._lag_timer is not None and not self._frames and not self._latest:
                    self._stop_lag_timer()
        except ConnectionError:
            pass  # the client is gone; its reader sees the disconnect and cleans up
        finally:
            if self.evicted:
                await close_slow_consumer(self._socket)

    def _take_pending(self, limit: float = float("inf")) -> list[Frame]:
        """What is queued, in the order it must be sent (the FIFO, then conflated), up
        to `limit` bytes (at least one frame)."""
        frames: list[Frame] = []
        size = 0
        while self._frames and size < limit:
            frame = self._frames.popleft()
            frames.append(frame)
            size += len(frame.payload)
        if self._latest and not self._frames and size < limit:
            frames.extend(self._latest.values())
            size += sum(len(frame.payload) for frame in self._latest.values())
            self._latest = {}
        self._queued -= size
        return frames

    async def _drain_direct(self) -> None:
        direct = self._direct
        assert direct is not None
        while self._frames or self._latest:
            await direct.wait_ready()
            # One write per chunk of the backlog: a lagging client costs one syscall per
            # wake-up, not one per message, and the transport never holds a backlog of
            # megabytes for it (which would be over its unread-output limit).
            chunk = self._take_pending(WRITE_CHUNK_BYTES)
            direct.write(b"".join(frame.wire for frame in chunk))

    async def _drain_asgi(self) -> None:
        while self._frames or self._latest:
            for frame in self._take_pending():
                await self._socket.send(frame)

    def _stop_lag_timer(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None

    def _evict(self) -> None:
        if self.evicted:
            return
        logger.warning("closing slow consumer client_id=%s", self.id)
        self.evicted = True
        self._stop_lag_timer()
        self._stats.slow_consumer_disconnects += 1
        self._frames.clear()
        self._latest.clear()
        self._queued = 0
        if self._writer_started:
            assert self._writer is not None
            self._writer.cancel()  # it may be blocked on the socket; its finally closes
        elif self._wakeup is not None:
            # Cancelling a task before its first step would skip its body, close included.
            self._wakeup.set()
