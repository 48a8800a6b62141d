"""Fan-out: who is subscribed to what, and getting each trade to each subscriber.

The `Hub` holds the symbol -> clients map and a queue of upstream trade batches that
one broadcaster coroutine drains. Each price update is encoded once and handed to
every subscriber's bounded outbox without awaiting anything; each client's own writer
task drains its outbox to its socket. So a slow or dead client can only ever fall
behind itself: when its outbox is full its pending updates are conflated to the latest
per symbol, and if it stays behind too long it is closed with 1013.

The hub also keeps the upstream reference counts: the first client wanting a symbol
asks the upstream for it, the last one leaving releases it. All of this happens in
synchronous code on the event loop, so no interleaving can make the counts wrong.

This module must never await a client's socket from the broadcaster, and never talk
to the upstream except through `UpstreamInterest`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import protocol
from protocol import Frame, UpstreamState

logger = logging.getLogger(__name__)

SLOW_CONSUMER_CLOSE = 1013  # "try again later": the standard code for an overloaded peer
CLOSE_GRACE_SECONDS = 1.0


class Trade(NamedTuple):
    symbol: str
    price: float
    volume: float
    timestamp: int  # Unix milliseconds, as Finnhub sends it


class Observer(Protocol):
    """Where timings go (a prometheus_client Histogram, in the app)."""

    def observe(self, amount: float) -> None: ...


class UpstreamInterest(Protocol):
    """The only way the hub reaches upstream: which symbols somebody wants."""

    def want(self, symbol: str) -> None: ...

    def release(self, symbol: str) -> None: ...


class ClientSocket(Protocol):
    """What the hub needs from a client's WebSocket; send and close raise ConnectionError."""

    async def send_text(self, frame: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


class FrameWriter(Protocol):
    """A client's socket as a byte stream we may write whole WebSocket frames to.

    The fast path: writing a pre-built frame costs one buffered, non-blocking write,
    with no task switch. `ready()` is false while the socket's send buffer is full or
    the connection is closing; `wait_ready()` raises ConnectionError once it is gone.
    """

    def ready(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def wait_ready(self) -> None: ...


@dataclass
class FanoutStats:
    price_updates_sent: int = 0
    conflated_updates: int = 0
    slow_consumer_disconnects: int = 0


class ClientConnection:
    """One client: its symbols, and a bounded outbox drained by its own writer task.

    While the client keeps up and nothing is queued, a frame is written straight to its
    socket (`FrameWriter`) from the broadcaster: no task switch, no await. Otherwise
    frames wait in a FIFO of at most `outbox_size`; once that is full, price updates go
    to `_latest` instead (one per symbol, newest wins). The writer task sends the FIFO
    first, then those, so updates for one symbol are never reordered and memory stays
    bounded by the number of symbols. Control frames (confirmations, errors, status)
    always take the FIFO: they are rare and caused by the client itself.
    """

    def __init__(
        self,
        socket: ClientSocket,
        stats: FanoutStats,
        *,
        direct: FrameWriter | None = None,
        outbox_size: int,
        slow_consumer_timeout: float,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.symbols: set[str] = set()
        self.evicted = False
        self._socket = socket
        self._direct = direct
        self._stats = stats
        self._outbox_size = outbox_size
        self._slow_consumer_timeout = slow_consumer_timeout
        self._frames: deque[Frame] = deque()
        self._latest: dict[str, Frame] = {}
        self._lag_timer: asyncio.TimerHandle | None = None
        # The writer task (and its wake-up event) exist only once something had to
        # wait: a client that always keeps up never costs a task.
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._writer_started = False
        self._stopped = False

    @property
    def fast_path(self) -> bool:
        return self._direct is not None

    def send(self, frame: Frame) -> None:
        """Send or queue a control frame; never blocks.

        Control frames cannot be conflated, so a client that keeps asking while it
        does not read would queue them without end: past twice the outbox size it is
        closed as a slow consumer at once.
        """
        direct = self._direct
        if direct is not None and not self._frames and not self._latest and direct.ready():
            direct.write(frame.wire)
            return
        if len(self._frames) >= 2 * self._outbox_size:
            self._evict()
            return
        self._frames.append(frame)
        self._wake_writer()

    def offer_update(self, symbol: str, frame: Frame) -> None:
        """Send or queue a price update, conflating it if the client is behind; never blocks."""
        direct = self._direct
        if not self._frames and not self._latest:
            if direct is not None and direct.ready():
                direct.write(frame.wire)
                if self._lag_timer is not None:  # it took everything: caught up
                    self._stop_lag_timer()
                return
            self._frames.append(frame)
        elif not self._latest and len(self._frames) < self._outbox_size:
            self._frames.append(frame)
        else:
            if symbol in self._latest:
                self._stats.conflated_updates += 1
            self._latest[symbol] = frame
            if self._lag_timer is None and not self.evicted:
                self._lag_timer = asyncio.get_running_loop().call_later(
                    self._slow_consumer_timeout, self._evict
                )
        self._wake_writer()

    def forget_pending(self, symbol: str) -> None:
        """Drop a conflated update for a symbol the client just left."""
        self._latest.pop(symbol, None)

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
                # Caught up only if the socket also took the backlog without filling up;
                # a client whose buffer drains a little now and then is still behind.
                if self._lag_timer is not None and (self._direct is None or self._direct.ready()):
                    self._stop_lag_timer()
        except ConnectionError:
            pass  # the client is gone; its reader sees the disconnect and cleans up
        finally:
            if self.evicted:
                await self._close_slow_consumer()

    def _take_pending(self) -> list[Frame]:
        """Everything queued, in the order it must be sent: the FIFO, then conflated."""
        frames = list(self._frames)
        self._frames.clear()
        if self._latest:
            frames.extend(self._latest.values())
            self._latest = {}
        return frames

    async def _drain_direct(self) -> None:
        direct = self._direct
        assert direct is not None
        while self._frames or self._latest:
            await direct.wait_ready()
            # One write for the whole backlog: a lagging client costs one syscall per
            # wake-up, not one per message.
            direct.write(b"".join(frame.wire for frame in self._take_pending()))

    async def _drain_asgi(self) -> None:
        while self._frames or self._latest:
            for frame in self._take_pending():
                await self._socket.send_text(frame.text)

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
        if self._writer_started:
            assert self._writer is not None
            self._writer.cancel()  # it may be blocked on the socket; its finally closes
        elif self._wakeup is not None:
            # Cancelling a task before its first step would skip its body, close included.
            self._wakeup.set()

    async def _close_slow_consumer(self) -> None:
        # A client this far behind may not read our close frame for a long time (or
        # ever), and its unread bytes hold memory. One that is still reading gets the
        # 1013 close within the grace period; one that is not gets a reset after it.
        try:
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self._socket.close(SLOW_CONSUMER_CLOSE, "slow consumer")
                await asyncio.sleep(CLOSE_GRACE_SECONDS)  # cancelled once it disconnects
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._socket.abort()


class Hub:
    """Symbol -> subscribers, upstream reference counts, and the broadcaster."""

    def __init__(
        self,
        upstream: UpstreamInterest,
        *,
        outbox_size: int = 256,
        slow_consumer_timeout: float = 10.0,
        queue_size: int = 1024,
        max_symbols_per_client: int = 50,
        max_upstream_symbols: int = 50,
        handoff_observer: Observer | None = None,
    ) -> None:
        self.stats = FanoutStats()
        self.upstream_state: UpstreamState = "connecting"
        self._upstream = upstream
        self._outbox_size = outbox_size
        self._slow_consumer_timeout = slow_consumer_timeout
        self._max_symbols_per_client = max_symbols_per_client
        # Finnhub's free plan carries about 50 symbols per connection; refusing the
        # 51st here is clearer than Finnhub's unattributed "too many symbols".
        self._max_upstream_symbols = max_upstream_symbols
        self._clients: set[ClientConnection] = set()
        self._subscribers: dict[str, set[ClientConnection]] = {}
        self._latest_update: dict[str, Frame] = {}
        # Bounded so a stalled broadcaster pushes back on the upstream reader instead
        # of buffering without limit.
        self._trades: asyncio.Queue[tuple[list[Trade], float]] = asyncio.Queue(maxsize=queue_size)
        self._handoff_observer = handoff_observer

    # -- what the HTTP side reads ------------------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def fast_path_count(self) -> int:
        """Clients whose frames are written straight to their socket."""
        return sum(1 for client in self._clients if client.fast_path)

    def symbols(self) -> list[str]:
        """Every symbol with at least one subscriber: what the upstream should carry."""
        return sorted(self._subscribers)

    def subscribers_of(self, symbol: str) -> frozenset[ClientConnection]:
        return frozenset(self._subscribers.get(symbol, ()))

    # -- clients -------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, socket: ClientSocket, direct: FrameWriter | None = None
    ) -> AsyncIterator[ClientConnection]:
        """Register a client for the length of the block; leaving releases everything."""
        client = ClientConnection(
            socket,
            self.stats,
            direct=direct,
            outbox_size=self._outbox_size,
            slow_consumer_timeout=self._slow_consumer_timeout,
        )
        client.send(protocol.connection_message(client.id))
        client.send(protocol.status_message(self.upstream_state))
        self._clients.add(client)
        try:
            yield client
        finally:
            self._clients.discard(client)
            self._leave(client, list(client.symbols))
            await client.stop()

    def subscribe(self, client: ClientConnection, symbols: list[str]) -> None:
        """Add symbols (already validated) to a client within the limits, say what was
        refused and why, confirm what it now holds of them, then send snapshots."""
        added: list[str] = []
        over_client_limit: list[str] = []
        over_upstream_limit: list[str] = []
        for symbol in symbols:
            if symbol in client.symbols:
                continue
            if len(client.symbols) >= self._max_symbols_per_client:
                over_client_limit.append(symbol)
                continue
            subscribers = self._subscribers.get(symbol)
            if subscribers is None:
                if len(self._subscribers) >= self._max_upstream_symbols:
                    over_upstream_limit.append(symbol)
                    continue
                subscribers = self._subscribers[symbol] = set()
                self._upstream.want(symbol)
            subscribers.add(client)
            client.symbols.add(symbol)
            added.append(symbol)
        if over_client_limit:
            client.send(
                protocol.error_message(
                    "too_many_symbols",
                    f"a client may hold at most {self._max_symbols_per_client} symbols; "
                    f"refused: {', '.join(over_client_limit)}",
                    over_client_limit,
                )
            )
        if over_upstream_limit:
            client.send(
                protocol.error_message(
                    "symbol_limit",
                    f"the gateway carries at most {self._max_upstream_symbols} distinct symbols "
                    f"upstream; refused: {', '.join(over_upstream_limit)}",
                    over_upstream_limit,
                )
            )
        held = [symbol for symbol in symbols if symbol in client.symbols]
        if held:
            client.send(protocol.subscription_message("subscribed", held))
        for symbol in added:
            snapshot = self._latest_update.get(symbol)
            if snapshot is not None:
                client.offer_update(symbol, snapshot)

    def check_consistency(self) -> None:
        """Raise AssertionError unless the maps agree with every client's own symbols
        (for tests and debugging; O(clients x symbols))."""
        expected: dict[str, set[ClientConnection]] = {}
        for client in self._clients:
            for symbol in client.symbols:
                expected.setdefault(symbol, set()).add(client)
        if expected != self._subscribers:
            raise AssertionError("hub subscriber map disagrees with its clients' symbols")

    def unsubscribe(self, client: ClientConnection, symbols: list[str]) -> None:
        self._leave(client, symbols)
        client.send(protocol.subscription_message("unsubscribed", symbols))

    def _leave(self, client: ClientConnection, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            if symbol not in client.symbols:
                continue
            client.symbols.discard(symbol)
            client.forget_pending(symbol)
            subscribers = self._subscribers[symbol]
            subscribers.discard(client)
            if not subscribers:
                del self._subscribers[symbol]
                # A snapshot of a symbol nobody follows would only go stale.
                self._latest_update.pop(symbol, None)
                self._upstream.release(symbol)

    # -- upstream side (called by the feed) ----------------------------------------------

    async def publish(self, trades: list[Trade], received_at: float) -> None:
        """Queue an upstream message's trades; `received_at` is its perf_counter() arrival."""
        await self._trades.put((trades, received_at))

    def upstream_state_changed(self, state: UpstreamState) -> None:
        self.upstream_state = state
        frame = protocol.status_message(state)
        for client in self._clients:
            client.send(frame)

    def upstream_refused(self, symbol: str | None, message: str) -> None:
        """Finnhub refused something: tell whoever asked, and stop pretending we have it."""
        if symbol is None:
            frame = protocol.error_message("upstream_error", message)
            for client in self._clients:
                client.send(frame)
            return
        if symbol not in self._subscribers:
            return  # refused, but everyone who asked has already left
        refused = [symbol]
        error = protocol.error_message("upstream_error", message, refused)
        for client in list(self._subscribers[symbol]):
            client.send(error)
            self.unsubscribe(client, refused)

    # -- the broadcaster -----------------------------------------------------------------

    async def broadcast_forever(self) -> None:
        while True:
            trades, received_at = await self._trades.get()
            self.fan_out(trades)
            if self._handoff_observer is not None:
                # Upstream arrival to the last hand-off, one observation per message.
                self._handoff_observer.observe(time.perf_counter() - received_at)
            # get() does not yield while a backlog is queued; writers and socket I/O
            # must run between batches or clients fall behind for no fault of theirs.
            await asyncio.sleep(0)

    def fan_out(self, trades: list[Trade]) -> None:
        for trade in trades:
            if trade.symbol in self._subscribers:  # else in flight while the last one left
                self.fan_out_frame(trade.symbol, protocol.price_update_message(*trade))

    def fan_out_frame(self, symbol: str, frame: Frame) -> None:
        """Hand one encoded price update to every subscriber (also the entry point for
        updates another process encoded, in cluster mode)."""
        subscribers = self._subscribers.get(symbol)
        if not subscribers:
            return
        self._latest_update[symbol] = frame
        for client in subscribers:
            client.offer_update(symbol, frame)
        self.stats.price_updates_sent += len(subscribers)

    def seed_snapshot(self, symbol: str, frame: Frame) -> None:
        """A last price learned from elsewhere (cluster mode): offered to the symbol's
        subscribers unless a live update already arrived."""
        if symbol in self._subscribers and symbol not in self._latest_update:
            self.fan_out_frame(symbol, frame)
