"""Fan-out: who is subscribed to what, and getting each update to each subscriber.

The `Hub` holds the symbol -> clients map and a bounded queue of `UpdateBatch`es that
one broadcaster coroutine drains. Everything enters through `publish()`, already
encoded, in both modes: a single process encodes the feed's trades
(`trades_received`), a cluster process receives them encoded from Redis. So the hot
path and its accounting (sent counts, snapshots, hand-off timing) are one piece of
code. Each frame is handed to every subscriber's `ClientConnection` without awaiting.

The hub also keeps the upstream reference counts in a `SymbolInterest`: the first
client wanting a symbol asks for it, the last one leaving releases it. All of this
happens in synchronous code on the event loop, so no interleaving can make the counts
wrong.

This module must never await a client's socket from the broadcaster, and never talks
to the upstream except through its `SymbolInterest`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import protocol
from client_connection import ClientConnection, ClientSocket, FanoutStats, FrameWriter
from protocol import Frame, UpstreamState
from upstream import SymbolInterest, Trade


class Observer(Protocol):
    """Where timings go (a prometheus_client Histogram, in the app)."""

    def observe(self, amount: float) -> None: ...


class Update(NamedTuple):
    symbol: str
    frame: Frame  # an encoded price_update


@dataclass
class UpdateBatch:
    """The updates of one upstream message, in upstream order."""

    updates: list[Update]
    received_at: float  # perf_counter() at the upstream message's arrival
    # False for a last price learned elsewhere (a cluster snapshot): it only fills in
    # for symbols that have no live update yet, and never replaces one.
    live: bool = True


class Hub:
    """Symbol -> subscribers, upstream reference counts, and the broadcaster."""

    def __init__(
        self,
        interest: SymbolInterest,
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
        self.interest = interest
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
        self._batches: asyncio.Queue[UpdateBatch] = asyncio.Queue(maxsize=queue_size)
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

    def check_consistency(self) -> None:
        """Raise AssertionError unless the maps agree with every client's own symbols and
        with the upstream interest (for tests and debugging; O(clients x symbols))."""
        expected: dict[str, set[ClientConnection]] = {}
        for client in self._clients:
            for symbol in client.symbols:
                expected.setdefault(symbol, set()).add(client)
        if expected != self._subscribers:
            raise AssertionError("hub subscriber map disagrees with its clients' symbols")
        if set(self._subscribers) != self.interest.symbols:
            raise AssertionError("hub subscriber map disagrees with the upstream interest")

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
                self.interest.want(symbol)
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
                self.interest.release(symbol)

    # -- the upstream side -----------------------------------------------------------------

    async def publish(self, batch: UpdateBatch) -> None:
        """The one way in for price updates: queue a batch for the broadcaster (waits
        while the queue is full, which pushes back on whoever reads the upstream)."""
        await self._batches.put(batch)

    async def trades_received(self, trades: list[Trade], received_at: float) -> None:
        """A single process's feed listener: encode once, then publish."""
        updates = [
            Update(trade.symbol, protocol.price_update_message(*trade))
            for trade in trades
            if trade.symbol in self._subscribers  # else in flight while the last one left
        ]
        if updates:
            await self.publish(UpdateBatch(updates, received_at))

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
            batch = await self._batches.get()
            self.deliver(batch)
            if self._handoff_observer is not None:
                # Upstream arrival to the last hand-off, one observation per message.
                self._handoff_observer.observe(time.perf_counter() - batch.received_at)
            # get() does not yield while a backlog is queued; writers and socket I/O
            # must run between batches or clients fall behind for no fault of theirs.
            await asyncio.sleep(0)

    def deliver(self, batch: UpdateBatch) -> None:
        """Hand each update to every subscriber of its symbol, and keep it as the
        symbol's snapshot for later subscribers."""
        for symbol, frame in batch.updates:
            subscribers = self._subscribers.get(symbol)
            if not subscribers or (not batch.live and symbol in self._latest_update):
                continue
            self._latest_update[symbol] = frame
            for client in subscribers:
                client.offer_update(symbol, frame)
            self.stats.price_updates_sent += len(subscribers)
