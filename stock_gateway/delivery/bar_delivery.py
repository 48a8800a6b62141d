"""Bar subscriptions: who wants which symbol's bars in which interval, and getting the
bars to them.

`subscribe(client, symbols, interval)` holds each symbol through the hub (the same
entitlements, per-client cap and upstream capacity as a price subscription: a symbol
wanted only for bars is still carried upstream, and counted once per client however
many intervals it follows), confirms with a `subscription` carrying the interval, then
sends each symbol's held history as one `bars` message, encoded once for every client
until the series changes (delivery/bar_history.py). A history costs its bytes from the client's
and its address's allowances (access/history_budget.py): one that does not fit is
refused (`rate_limited`, naming the limit) and the symbol is not subscribed; a series
the client already follows gets the confirmation and no history again, for free. From
then on `deliver(events)` sends each bar event (live, final, revised) to that symbol and
interval's subscribers, encoded once.

Where the events come from depends on the mode: in one process, `trades_received`
feeds the local `BarBook` and `run()` reports what is due every `BAR_CLOCK_SECONDS`; in a
cluster, the leader aggregates and every node `apply`s the events it publishes
(cluster/redis_relay.py), so the book here is a mirror that serves history. This module never
reads the upstream or the clock except through those calls.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable

from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.access.holds import RefusedSymbols, SymbolHolds
from stock_gateway.access.refusal import Refusal
from stock_gateway.bars.book import INTERVALS, Bar, BarBook, BarEvent, Interval
from stock_gateway.bars.intervals import INTERVAL_MS
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.delivery.bar_history import HistoryFrames
from stock_gateway.delivery.encoders import Encoder, send_each
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.market_data.model import Trade, UpstreamState
from stock_gateway.protocol import Frame

BAR_CLOCK_SECONDS = 0.1  # how often closes and live updates are looked for
TRADES_PER_SLICE = 5000  # trades counted between two yields to the event loop
# A bar in Finnhub's candle shape over HTTP: six numbers and a flag, 50-62 bytes.
ESTIMATED_BAR_BYTES = 56


class BarDelivery:
    def __init__(
        self,
        book: BarBook,
        holds: SymbolHolds,
        *,
        aggregating: bool = True,
        history_ready: Callable[[list[str]], Awaitable[None]] | None = None,
        budget: HistoryBudget | None = None,
        recorder: BarRecorder | None = None,
        history: int,
    ) -> None:
        self.book = book
        self.histories = HistoryFrames(book)
        self._holds = holds
        self.budget = budget
        # On a cluster: wait until the stored history of newly wanted symbols is here.
        self._history_ready = history_ready
        self._aggregating = aggregating  # False on a cluster: the leader aggregates
        # With a store: in one process every event is kept; on a cluster the leader
        # keeps them (cluster/bars.py) and this serves GET /bars and /health only.
        self.recorder = recorder
        self._history = history
        self._subscribers: dict[tuple[str, Interval], set[ClientConnection]] = {}
        self._reading: set[str] = set()  # owners with a read over HTTP under way

    def symbols(self) -> set[str]:
        """Symbols somebody wants bars of."""
        return {symbol for symbol, _ in self._subscribers}

    def subscribers_of(self, symbol: str, interval: Interval) -> frozenset[ClientConnection]:
        return frozenset(self._subscribers.get((symbol, interval), ()))

    # -- clients ---------------------------------------------------------------------------

    async def subscribe(
        self, client: ClientConnection, symbols: list[str], interval: Interval
    ) -> None:
        refused = RefusedSymbols()
        added: list[str] = []
        charged: dict[str, int] = {}  # symbol -> bytes of history paid for
        for symbol in symbols:
            if interval in client.bar_intervals.get(symbol, ()):
                continue  # it has this history already: confirmed, not sent again
            cost = len(self.histories.frame(symbol, interval).wire)
            refusal = self._charge(client, cost)
            if refusal is None:
                refusal = self._holds.hold(client, symbol)
                if refusal is not None:
                    self._refund(client, cost)
            if refusal is not None:
                refused.add(refusal, symbol)
                continue
            charged[symbol] = cost
            client.hold_bars(symbol, interval)
            added.append(symbol)
        for error in client.encoder.refusals(refused.items()):
            client.send(error)
        held = [symbol for symbol in symbols if interval in client.bar_intervals.get(symbol, ())]
        if held and (said := client.encoder.subscription("subscribed", held, interval)):
            client.send(said)
        if added and self._history_ready is not None:
            await self._history_ready(added)
        if added and self.recorder is not None and self._aggregating:
            await self.recorder.load(self.book, added, self._history)
        for symbol in added:
            if interval not in client.bar_intervals.get(symbol, ()):
                self._refund(client, charged[symbol])
                continue  # unsubscribed (or gone) while the history was on its way
            # History, then live bars: nothing is awaited between the two, so no event
            # can fall between them.
            history = self.histories.frame(symbol, interval)
            self._refund(client, charged[symbol] - len(history.wire))  # loaded meanwhile
            if (said := client.encoder.history(history)) is not None:
                client.send(said)
            self._subscribers.setdefault((symbol, interval), set()).add(client)

    def _charge(self, client: ClientConnection, cost: int) -> Refusal | None:
        if self.budget is None:
            return None
        return self.budget.charge(client.id, client.owner, cost)

    def _refund(self, client: ClientConnection, cost: int) -> None:
        """Give `cost` bytes back (negative: charge them, in debt if need be)."""
        if self.budget is not None and cost:
            self.budget.owe(client.id, client.owner, -cost)

    def unsubscribe(self, client: ClientConnection, symbols: list[str], interval: Interval) -> None:
        for symbol in symbols:
            self._leave(client, symbol, interval)
        said = client.encoder.subscription("unsubscribed", symbols, interval)
        if said is not None:
            client.send(said)

    def holders_of(self, symbol: str) -> set[ClientConnection]:
        """Clients following `symbol`'s bars in any interval."""
        holders: set[ClientConnection] = set()
        for interval in INTERVALS:
            holders |= self._subscribers.get((symbol, interval), set())
        return holders

    def drop(self, client: ClientConnection, symbol: str) -> None:
        """Unsubscribe `client` from `symbol`'s bars in every interval (confirmed)."""
        for interval in sorted(client.bar_intervals.get(symbol, ())):
            self.unsubscribe(client, [symbol], interval)

    def leave_all(self, client: ClientConnection) -> None:
        for symbol, intervals in list(client.bar_intervals.items()):
            for interval in list(intervals):
                self._leave(client, symbol, interval)

    def _leave(self, client: ClientConnection, symbol: str, interval: Interval) -> None:
        if interval not in client.bar_intervals.get(symbol, ()):
            return
        client.release_bars(symbol, interval)
        subscribers = self._subscribers.get((symbol, interval))
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self._subscribers[(symbol, interval)]
        self._holds.release(client, symbol)

    # -- bars --------------------------------------------------------------------------------

    async def trades_received(self, trades: list[Trade]) -> None:
        """A single process's trades (already parsed by the feed) into the book, a slice
        at a time: one huge upstream message must not freeze everything else."""
        if not self._aggregating:
            return
        if self.recorder is not None:  # a symbol's stored bars before its first trade,
            # loaded beside the feed: its trades wait for them, nothing else does
            trades = self.recorder.loads.hold_back(self.book, trades, self._history, self._count)
        for start in range(0, len(trades), TRADES_PER_SLICE):
            if start:
                await asyncio.sleep(0)
            chunk = trades[start : start + TRADES_PER_SLICE]
            self._record_and_deliver(self.book.add_trades(chunk, _now_ms()))

    def _count(self, trades: list[Trade]) -> None:
        """Trades held while their symbol's stored bars loaded, counted after them."""
        self._record_and_deliver(self.book.add_trades(trades, _now_ms()))

    # -- reading over HTTP (GET /bars and Finnhub's candle endpoint) -----------------------

    async def series(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        """A series' bars with start_ms <= t < end_ms, the newest `limit`, oldest first:
        the stored ones with those held in memory, or the book's alone without a store."""
        if self.recorder is not None:
            return await self.recorder.series(self.book, symbol, interval, start_ms, end_ms, limit)
        held = [bar for bar in self.book.bars(symbol, interval) if start_ms <= bar.t < end_ms]
        return held[-limit:]

    async def read(
        self,
        owner: str,
        series: tuple[str, Interval, int, int, int],
        encode: Callable[[list[Bar]], bytes],
    ) -> bytes | Refusal:
        """A series (symbol, interval, start_ms, end_ms, limit) read over HTTP and
        encoded, its bytes charged to the history allowances as a `bars` message's are
        (one owner's HTTP reads count as one client, beside its sockets), and to the
        gateway's for all reads. The size is known once the answer is made, so it is
        charged then; before the work an owner in debt is refused, an owner reads one
        answer at a time, and the gateway's allowance must hold an estimate
        (`read_estimate`, settled after), so many owners cannot read at once."""
        key = f"http {owner}"
        if owner in self._reading:
            return Refusal("one bar read at a time per address or user", "rate_limited",
                           retry_after=1)  # fmt: skip
        estimate = read_estimate(*series[1:])
        if self.budget is not None:
            refusal = self.budget.charge_read(key, owner, estimate)
            if refusal is not None:
                return refusal
        self._reading.add(owner)
        size = 0  # a failed read costs nothing: the estimate is given back
        try:
            body = encode(await self.series(*series))
            size = len(body)
        finally:
            self._reading.discard(owner)
            if self.budget is not None:
                self.budget.settle_read(key, owner, size, estimate)
        return body

    def upstream_state_changed(self, state: UpstreamState) -> None:
        """Bars overlapping a time the upstream was not received say so (`gap`)."""
        if not self._aggregating:
            return
        if state == "connected":
            self.book.upstream_up(_now_ms())
        else:
            self.book.upstream_down(_now_ms())

    def deliver(self, events: Iterable[BarEvent]) -> None:
        for event in events:
            subscribers = self._subscribers.get((event.symbol, event.interval))
            if subscribers and not event.partial:  # a partial bar is for the store alone
                send_each(subscribers, functools.partial(_bar_of, event))

    async def run(self) -> None:
        """Close bars on the clock and send live updates (single-process mode)."""
        while True:
            await asyncio.sleep(BAR_CLOCK_SECONDS)
            self._record_and_deliver(self.book.due(_now_ms()))

    def _record_and_deliver(self, events: list[BarEvent]) -> None:
        if self.recorder is not None:
            self.recorder.record(events)
        self.deliver(events)


def read_estimate(interval: Interval, start_ms: int, end_ms: int, limit: int) -> int:
    """The bytes a read of at most `limit` bars from [start_ms, end_ms) is charged before
    it is made: as many bars as fit the span (or the limit), ESTIMATED_BAR_BYTES each."""
    fits = (end_ms - start_ms) // INTERVAL_MS[interval] + 1
    return ESTIMATED_BAR_BYTES * max(1, min(limit, fits))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _bar_of(event: BarEvent, encoder: Encoder) -> Frame | None:
    return encoder.bar(event)
