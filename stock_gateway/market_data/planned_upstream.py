"""`PlannedUpstream`: every wanted symbol served, through a socket of a few slots.

It is the gateway's `Upstream` (market_data/upstream.py): its `interest` holds every
symbol clients want, however many. While it runs, a steering loop re-plans every
`tick` seconds and whenever the interest changes (`FeedPlanner`,
market_data/feed_plan.py): the socket's own `SymbolInterest` (followed by the wrapped
`FinnhubFeed`) is set to the planner's live symbols and turns, each plan's changed
feeds (often none) go to `on_feeds` (clients are told), and the polled symbols, most
urgent first, to `poll` (the quote service's poller). Every trade that comes is a
price for the planner (a sampled symbol's turn ends when it trades), and counts
towards its trade rate.

On a cluster only the leader runs its upstream, so one plan serves the key: the
price frames the leader encodes carry its feeds (`feed_of`), and its feeds and polled
quotes reach every node through cluster/feeds.py. This module does no I/O of its own;
the wrapped upstream does.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Mapping

from stock_gateway.market_data.feed_plan import Feed, FeedPlanner
from stock_gateway.market_data.model import SymbolInterest, Trade, UpstreamState
from stock_gateway.market_data.upstream import Upstream, UpstreamCounters, UpstreamListener
from stock_gateway.runtime.cancellation import raise_if_cancelling

TICK_SECONDS = 0.25  # a newly most-demanded symbol goes live within this (and the pace)
MINUTE = 60.0


class PlannedUpstream:
    def __init__(
        self,
        socket: Upstream,
        planner: FeedPlanner,
        interest: SymbolInterest,
        *,
        demand: Callable[[], Mapping[str, float]] = dict,
        on_feeds: Callable[[dict[str, Feed]], None] = lambda changes: None,
        poll: Callable[[list[str]], None] = lambda symbols: None,
        tick: float = TICK_SECONDS,
    ) -> None:
        self.interest = interest  # every wanted symbol (the hub's, or a cluster's union)
        self.planner = planner
        self.counters: UpstreamCounters = socket.counters
        self.state: UpstreamState = socket.state
        self._socket = socket
        self._demand = demand  # symbol -> weight, for the symbols this process knows
        self._on_feeds = on_feeds
        self._poll = poll
        self._tick = tick
        self._frames: deque[tuple[float, int]] = deque()  # (loop time, frames sent so far)

    def feed_of(self, symbol: str) -> str:
        return self.planner.feed_of(symbol)

    def subscribe_messages_per_minute(self) -> int:
        """Subscribe and unsubscribe messages sent upstream in the last minute."""
        if not self._frames:
            return 0
        return self.counters.frames_sent - self._frames[0][1]

    def report(self) -> dict[str, object]:
        """For /health and /metrics: symbols by feed, slot turnover, upstream subscribe
        messages in the last minute, and how stale the wanted symbols' prices are."""
        stale = sorted(self.planner.staleness())
        return {
            "symbols_by_feed": self.planner.counts(),
            "slot_turnover": self.planner.turnover,
            "upstream_subscribe_messages_per_minute": self.subscribe_messages_per_minute(),
            "price_staleness_seconds": {
                name: round(_quantile(stale, q), 3)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
            },
        }

    def replan(self) -> None:
        """One planning step: the socket, the feeds, the polls."""
        known = self._demand()
        demand = {symbol: known.get(symbol, 1.0) for symbol in self.interest.symbols}
        changes = self.planner.plan(demand)
        self._socket.interest.replace(self.planner.socket)
        self._on_feeds(changes)  # every plan, changes or none (a cluster's leader syncs)
        self._poll(self.planner.poll_order())

    async def run(self, listener: UpstreamListener) -> None:
        tap = _Tap(self, listener)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._socket.run(tap), name="upstream-socket")
                tasks.create_task(self._steer(), name="feed-planner")
        except ExceptionGroup as group:
            # Whoever supervises the upstream names its failure by its type, as for
            # the bare socket: the first failure, not the group that carried it.
            raise group.exceptions[0] from group

    async def _steer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.replan()
            now = loop.time()
            self._frames.append((now, self.counters.frames_sent))
            while self._frames and self._frames[0][0] < now - MINUTE:
                self._frames.popleft()
            try:
                # A deadline as well as an event: turns end and rates refill with time.
                async with asyncio.timeout(self._tick):
                    await self.interest.wait_changed()
            except TimeoutError as timeout:
                raise_if_cancelling(timeout)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _Tap:
    """The wrapped upstream's listener: tells the planner of prices, then passes on."""

    def __init__(self, upstream: PlannedUpstream, listener: UpstreamListener) -> None:
        self._upstream = upstream
        self._listener = listener

    async def trades_received(self, trades: list[Trade], received_at: float) -> None:
        for symbol, count in Counter(trade.symbol for trade in trades).items():
            self._upstream.planner.traded(symbol, count)
        await self._listener.trades_received(trades, received_at)

    def upstream_state_changed(self, state: UpstreamState) -> None:
        self._upstream.state = state
        self._listener.upstream_state_changed(state)

    def upstream_refused(self, symbol: str | None) -> None:
        self._listener.upstream_refused(symbol)
