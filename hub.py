"""Fan-out: who is subscribed to what, and getting each update to each subscriber.

The `Hub` holds the symbol -> clients map (delivery/subscribers.py) and a bounded queue
of `UpdateBatch`es that one broadcaster coroutine drains. Everything enters through
`publish()`, already encoded, from the relay (relay/local.py in one process,
cluster/redis_relay.py from Redis), so the hot path and its accounting (sent counts,
snapshots, hand-off timing) are one piece of code. Each frame is handed to every
subscriber's `ClientConnection` without awaiting.

The hub holds symbols for its clients through `SymbolHolds` (access/holds.py), which
decides what the upstream carries; all of it synchronous code on the event loop, so no
interleaving can make the counts wrong. The broadcaster yields to the event loop every
few thousand hand-offs (raw trades' too), so one huge upstream message cannot freeze
`/health` or the other sockets.

The hub never asks which dialect a client speaks: it hands each client's `Encoder`
(delivery/encoders.py, chosen by its endpoint) the events (a welcome, a status, a market
change, confirmations, refusals, snapshots), and the encoder says them in its dialect or
drops them. Live prices go to each client the way its encoder takes them: the relay's
`price_update` frames, or raw trades per group of clients (delivery/trade_groups.py).

This module must never await a client's socket from the broadcaster, and never talks
to the upstream except through the holds' `SymbolInterest`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain

from stock_gateway.access.entitlements import UNRESTRICTED, Entitlements
from stock_gateway.access.holds import RefusedSymbols, SymbolHolds
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.delivery.encoders import Encoder, send_each
from stock_gateway.delivery.outbox import ClientConnection, OutboxLimits
from stock_gateway.delivery.pacing import DeliveryClock, DeliveryGroups
from stock_gateway.delivery.quote_delivery import Feeds, quote_delivery
from stock_gateway.delivery.snapshots import LatestPrices
from stock_gateway.delivery.sockets import ClientSocket, FrameWriter
from stock_gateway.delivery.stats import FanoutStats, Observer
from stock_gateway.delivery.subscribers import Subscribers
from stock_gateway.delivery.trade_groups import TradeGroups
from stock_gateway.market_data.model import MarketStatus, Trade, UpstreamState
from stock_gateway.market_data.quotes import QuoteService
from stock_gateway.protocol import DeliveryOptions, Frame

# Hand-offs between two yields to the event loop inside one upstream message (~a few ms).
OFFERS_PER_SLICE = 5000
QUEUE_SIZE = 1024  # upstream messages queued for the broadcaster (not a setting)


@dataclass
class UpdateBatch:
    """The price updates of one upstream message (encoded `price_update` frames, each
    naming its symbol), in upstream order."""

    updates: list[Frame]
    received_at: float  # perf_counter() at the upstream message's arrival
    # False for a last price learned elsewhere (a cluster snapshot): it only fills in
    # for symbols that have no live update yet, and never replaces one.
    live: bool = True
    # The message's trades themselves, for clients whose dialect carries raw trades.
    trades: list[Trade] = field(default_factory=list)


class Hub:
    """Symbol -> subscribers, upstream reference counts, and the broadcaster."""

    def __init__(
        self,
        holds: SymbolHolds,
        latest: LatestPrices,
        subscribers: Subscribers,
        *,
        joined: Callable[[ClientConnection, list[str]], None],
        feeds: Feeds,
        bars: BarDelivery | None = None,
        quotes: QuoteService | None = None,
        outbox: OutboxLimits,
        max_batch_bytes: int,
        queue_size: int = QUEUE_SIZE,
        handoff_observer: Observer | None = None,
    ) -> None:
        self.stats = FanoutStats()
        self.holds = holds
        self.bars = bars  # bar subscriptions, held through the same holds
        self.quotes = quotes
        self.market_status: MarketStatus | None = None
        # Only a live symbol's subscriber asks for a quote: the planner prices the rest.
        self._quote_delivery = quote_delivery(quotes, self.subscribers_of, latest, feeds)
        self.clock = DeliveryClock()  # one timer for every throttled or batched client
        self.groups = DeliveryGroups(self.clock, self._count_conflated, max_batch_bytes)
        self.trades = TradeGroups()  # clients whose encoder takes raw trades
        self.upstream_state: UpstreamState = "connecting"
        self.capacity = holds.capacity
        self.interest = holds.capacity.interest
        self._outbox = outbox
        self._clients: set[ClientConnection] = set()
        # Who gets a symbol's updates how: `immediate` clients one by one, paced clients
        # (throttled or batched) once per delivery group, raw trades per trade group.
        self._map = subscribers  # built by wiring.py: the feed notices read it too
        self._subscribers = self._map.of_symbol  # read directly on the hot path
        self._immediate = self._map.immediate
        self._latest = latest
        # Bounded: a stalled broadcaster pushes back on the upstream reader, never buffers.
        self._batches: asyncio.Queue[UpdateBatch] = asyncio.Queue(maxsize=queue_size)
        self._handoff_observer = handoff_observer
        self._joined = joined  # how each new symbol comes, if not live (delivery/feed_notices.py)

    # -- what the HTTP side reads ------------------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def clients(self) -> frozenset[ClientConnection]:  # one look at each: /metrics, not /health
        return frozenset(self._clients)

    def symbols(self) -> list[str]:
        """Every symbol some client wants (prices or bars): what the upstream should carry."""
        if self.bars is None:
            return sorted(self._subscribers)
        return sorted(self._subscribers.keys() | self.bars.symbols())

    def subscribers_of(self, symbol: str) -> frozenset[ClientConnection]:
        return frozenset(self._subscribers.get(symbol, ()))

    # -- clients -------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self,
        socket: ClientSocket,
        direct: FrameWriter | None,
        *,
        encoder: Encoder,
        owner: str = "-",
        address: str = "-",
        entitlements: Entitlements = UNRESTRICTED,
    ) -> AsyncIterator[ClientConnection]:
        """Register a client for the length of the block; leaving releases everything.
        `owner` (its address, or its user) is whose fair share its symbols use; `encoder`
        is its dialect."""
        client = ClientConnection(
            socket,
            self.stats,
            owner=owner,
            address=address,
            entitlements=entitlements,
            direct=direct,
            limits=self._outbox,
            encoder=encoder,
        )
        for frame in encoder.welcome(client.id, self.upstream_state, self.market_status):
            client.send(frame)
        self._clients.add(client)
        self.stats.joined(client)  # /health's client counts, kept as they change
        try:
            yield client
        finally:
            self._clients.discard(client)
            self.stats.left(client)
            if self.bars is not None:
                self.bars.leave_all(client)
            self._leave(client, list(client.symbols))
            self.groups.remove(client)
            await client.stop()

    def subscribe(self, client: ClientConnection, symbols: list[str]) -> None:
        """Add symbols (already validated) to a client within the limits, say what was
        refused and why, confirm what it now holds of them, then send snapshots and
        quotes (each as far as its dialect says such things)."""
        added: list[str] = []
        refused = RefusedSymbols()
        encoder = client.encoder
        for symbol in symbols:
            if symbol in client.symbols:
                continue
            refusal = self.holds.hold(client, symbol)
            if refusal is not None:
                refused.add(refusal, symbol)
                continue
            self._map.add(client, symbol)
            client.hold(symbol)
            added.append(symbol)
        for frame in encoder.refusals(refused.items()):
            client.send(frame)
        if added:  # its symbols changed: its delivery or trade group too
            self._regroup(client)
        held = [symbol for symbol in symbols if symbol in client.symbols]
        if held and (confirmation := encoder.subscription("subscribed", held)) is not None:
            client.send(confirmation)
        self._joined(client, added)
        for symbol in added:
            snapshot = self._latest.get(symbol)
            said = encoder.snapshot(snapshot) if snapshot is not None else None
            if said is not None:
                client.offer_snapshot(symbol, said)
            if self._quote_delivery is not None and encoder.quotes:
                self._quote_delivery.send(client, symbol, quiet=snapshot is not None)

    def _regroup(self, client: ClientConnection) -> None:
        self.groups.place(client)
        self.trades.place(client, client.encoder.trade_format)

    def market_changed(self, status: MarketStatus) -> None:
        if status == self.market_status:
            return
        self.market_status = status
        send_each(self._clients, lambda encoder: encoder.market(status))
        if self._quote_delivery is not None:  # perhaps a new day: new previous closes
            self._quote_delivery.refresh(self._subscribers.keys(), self.interest.symbols)

    def set_options(self, client: ClientConnection, options: DeliveryOptions) -> None:
        """The client's delivery from now on; confirmed with an `options` message."""
        was_immediate = client.immediate
        client.set_options(options)
        self._map.served_anew(client, was_immediate)
        self.groups.place(client)
        confirmation = client.encoder.options(options)
        if confirmation is not None:
            client.send(confirmation)

    def _count_conflated(self) -> None:
        self.stats.conflated_updates += 1

    def unsubscribe(self, client: ClientConnection, symbols: list[str]) -> None:
        self._leave(client, symbols)
        confirmation = client.encoder.subscription("unsubscribed", symbols)
        if confirmation is not None:
            client.send(confirmation)

    def _leave(self, client: ClientConnection, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            if symbol not in client.symbols:
                continue
            client.release(symbol)
            self._map.remove(client, symbol)
            self.holds.release(client, symbol)
        self._regroup(client)

    # -- the upstream side -----------------------------------------------------------------

    async def publish(self, batch: UpdateBatch) -> None:
        """The one way in for price updates: queue a batch for the broadcaster (waits
        while the queue is full, which pushes back on whoever reads the upstream)."""
        await self._batches.put(batch)

    def upstream_state_changed(self, state: UpstreamState) -> None:
        self.upstream_state = state
        send_each(self._clients, lambda encoder: encoder.status(state))

    def upstream_refused(self, symbol: str | None) -> None:
        """Finnhub refused something: tell whoever asked (in fixed words: Finnhub's own
        text is logged by the feed, never relayed), and stop pretending we have it."""
        if symbol is None:
            send_each(self._clients, lambda encoder: encoder.upstream_error())
            return
        self.capacity.rejected(symbol)
        holders = set(self._subscribers.get(symbol, ()))
        if self.bars is not None:
            holders |= self.bars.holders_of(symbol)
        refused = [symbol]
        send_each(holders, lambda encoder: encoder.upstream_refused(symbol))
        for client in holders:  # none: refused, but everyone who asked has already left
            if symbol in client.symbols:
                self.unsubscribe(client, refused)
            if self.bars is not None:
                self.bars.drop(client, symbol)

    # -- the broadcaster -----------------------------------------------------------------

    async def broadcast_forever(self) -> None:
        while True:
            await self.broadcast(await self._batches.get())
            # get() does not yield while a backlog is queued; writers and socket I/O
            # must run between batches or clients fall behind for no fault of theirs.
            await asyncio.sleep(0)

    async def broadcast(self, batch: UpdateBatch) -> None:
        """Hand one upstream message's updates and trades to every subscriber, yielding
        to the event loop every OFFERS_PER_SLICE hand-offs."""
        offers = 0
        # A client's several updates from one upstream message: one write, not one
        # per update (each is still its own WebSocket frame).
        corked: list[ClientConnection] | None = [] if len(batch.updates) > 1 else None
        updates = (self._deliver_one(update, batch.live, corked) for update in batch.updates)
        for work in chain(updates, self.trades.deliveries(batch.trades)):
            offers += work
            if offers >= OFFERS_PER_SLICE:
                # One upstream message can carry tens of thousands of trades: let
                # /health, the other sockets and the feed run in between.
                offers = 0
                _uncork(corked)
                await asyncio.sleep(0)
        _uncork(corked)
        if self._handoff_observer is not None:
            # Upstream arrival to the last hand-off, one observation per message.
            self._handoff_observer.observe(time.perf_counter() - batch.received_at)

    def _deliver_one(
        self, frame: Frame, live: bool, corked: list[ClientConnection] | None = None
    ) -> int:
        """Hand one update to every subscriber of its symbol (each paced group once) and
        keep it as the symbol's snapshot for later subscribers; returns how many clients
        it was offered to."""
        symbol = frame.symbol
        subscribers = self._subscribers.get(symbol)
        if not subscribers:
            if live and symbol in self.interest:
                self._latest.keep(frame)  # lingering: fresh for a returning client
            return 0
        if not live and symbol in self._latest:
            return 0
        self._latest.keep(frame)
        for group in self.groups.of_symbol(symbol):
            group.pacing.offer(symbol, frame)
        immediate = self._immediate.get(symbol, ())
        if corked is not None:
            for client in immediate:
                if client.cork():
                    corked.append(client)
                client.offer_update(symbol, frame)
        else:
            for client in immediate:
                client.offer_update(symbol, frame)
        self.stats.price_updates_sent += len(subscribers) - self.trades.followers_of(symbol)
        return len(immediate) + len(self.groups.of_symbol(symbol))


def _uncork(corked: list[ClientConnection] | None) -> None:
    if corked:
        for client in corked:
            client.uncork()
        corked.clear()
