"""Bars (OHLCV candles) built from trades, per symbol and interval, by trade time.

`BarBook.add_trades(trades, now_ms)` puts each trade in the bar of its interval that
contains its time `t` (aligned to UTC boundaries: a 1m bar starts at a whole minute;
a daily bar is its exchange's calendar day, bars/intervals.py).
A bar is open until the clock passes its end plus `grace` (stragglers still count);
then `due(now_ms)` closes it and reports it `final`. A trade that arrives later for a
closed bar (Finnhub can deliver trades out of order) updates that bar at once and
reports it again, `final` and `revised`; one for an interval that had no trades makes
the bar it lacked; one for a bar older than the history held is reported `partial`
(that trade alone, for the store to merge into the bar it keeps). An interval with no
trades has no bar. While a bar is open, `due()` reports it at most once per
`live_every` seconds, and only if it changed.
A bar whose interval overlaps a time the upstream was not received (`upstream_down` to
`upstream_up`, bars/outages.py) says so: `gap` is true, and stays true.

A bar itself (open and close by trade time, its volume, its checks) is bars/bar.py.

A trade stamped more than `max_ahead` seconds (BAR_MAX_AHEAD_SECONDS) past the clock
counts in no bar (its price is still delivered), and a series holds at most
MAX_OPEN_BARS open bars: an upstream's clock may be a little ahead of ours, but one
message of trades stamped up to an hour ahead must not make thousands of future bars.

At most `history` closed bars are kept per symbol and interval, plus the open one(s).
`revision()` names the state of a series' closed bars and of its open ones, each changing
with that part (never reused), so an encoded history is kept until it is out of date
(delivery/bar_history.py). Pure bookkeeping: never clients, Redis or the clock (times passed in).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# Re-exported: bars and intervals are part of the book's vocabulary for every other module.
from stock_gateway.bars.bar import MAX_BAR_BYTES as MAX_BAR_BYTES
from stock_gateway.bars.bar import Bar as Bar
from stock_gateway.bars.bar import BarEvent as BarEvent
from stock_gateway.bars.intervals import INTERVAL_MS as INTERVAL_MS
from stock_gateway.bars.intervals import INTERVALS as INTERVALS
from stock_gateway.bars.intervals import Interval as Interval
from stock_gateway.bars.intervals import bar_span
from stock_gateway.bars.outages import Outages
from stock_gateway.market_data.model import Trade

MAX_GRACE_SECONDS = 1.0
BAR_MAX_AHEAD_SECONDS = 5.0  # README "Live candles"
MAX_OPEN_BARS = 16  # per symbol and interval; the clock allows ~7 (1s bars, 5 s ahead)
_REVISIONS = itertools.count(1)  # one sequence for every series of every book


@dataclass
class _Series:
    """One symbol in one interval: closed bars (oldest first) and the open ones."""

    closed: deque[Bar]
    open: dict[int, Bar] = field(default_factory=dict)  # start -> bar
    changed: set[int] = field(default_factory=set)  # open bars changed since last reported
    reported_at: float = float("-inf")  # seconds, of the last live report
    closed_revision: int = field(default_factory=lambda: next(_REVISIONS))
    open_revision: int = field(default_factory=lambda: next(_REVISIONS))

    def closed_changed(self) -> None:
        self.closed_revision = next(_REVISIONS)

    def open_changed(self) -> None:
        self.open_revision = next(_REVISIONS)

    def closed_bar(self, start: int) -> Bar | None:
        for bar in reversed(self.closed):  # a late trade is nearly always for a recent bar
            if bar.t == start:
                return bar
            if bar.t < start:
                return None
        return None

    def insert_closed(self, bar: Bar) -> bool:
        """Keep `closed` in start order and bounded; False if too old to keep."""
        closed = self.closed
        if len(closed) == closed.maxlen:
            if not closed or bar.t < closed[0].t:
                return False
            closed.popleft()
        index = len(closed)
        while index > 0 and closed[index - 1].t > bar.t:
            index -= 1
        closed.insert(index, bar)
        self.closed_changed()
        return True


class BarBook:
    def __init__(
        self,
        *,
        history: int,
        grace: float,
        live_every: float = 1.0,
        max_ahead: float = BAR_MAX_AHEAD_SECONDS,
        outages: Outages | None = None,
    ) -> None:
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise ValueError(f"grace must be 0 to {MAX_GRACE_SECONDS:g} s")
        self._history = history
        self._grace_ms = round(grace * 1000)
        self._live_every = live_every
        self._max_ahead_ms = round(max_ahead * 1000)
        self._series: dict[tuple[str, Interval], _Series] = {}
        self._outages = outages or Outages()  # a mirror's book: never blind itself

    @property
    def symbols(self) -> set[str]:
        return {symbol for symbol, _ in self._series}

    def bars(self, symbol: str, interval: Interval) -> list[Bar]:
        """The bars held, oldest first: the closed ones, then the open one(s)."""
        series = self._series.get((symbol, interval))
        if series is None:
            return []
        held = [*series.closed, *series.open.values()]
        held.sort(key=lambda bar: bar.t)  # an open bar may be older than a closed one
        return held

    def revision(self, symbol: str, interval: Interval) -> tuple[int, int] | None:
        """The revisions of the series' closed bars and of its open ones (None: no
        series); each changes whenever that part of the series does."""
        series = self._series.get((symbol, interval))
        return None if series is None else (series.closed_revision, series.open_revision)

    def parts(self, symbol: str, interval: Interval) -> tuple[list[Bar], list[Bar]]:
        """The closed bars (oldest first) and the open ones (by start), apart."""
        series = self._series.get((symbol, interval))
        if series is None:
            return [], []
        return list(series.closed), [series.open[start] for start in sorted(series.open)]

    def forget(self, symbol: str) -> None:
        for interval in INTERVALS:
            self._series.pop((symbol, interval), None)

    def add_trades(self, trades: Iterable[Trade], now_ms: int) -> list[BarEvent]:
        """Count trades into their bars; returns the revised finals late trades caused
        (one per bar, however many late trades it got)."""
        revised: dict[tuple[str, Interval, int], BarEvent] = {}
        newest = now_ms + self._max_ahead_ms
        for trade in trades:
            symbol, price, volume, t, _ = trade
            if t > newest:
                continue  # its price is delivered; a bar in the future it may not make
            for interval in INTERVALS:
                event = self._add(symbol, interval, price, volume, t, now_ms)
                if event is not None:
                    key = (symbol, interval, event.bar["t"])
                    earlier = revised.get(key)
                    if earlier is not None and event.partial:  # else: a later report
                        event = earlier.merged(event)  # of a held bar, including it
                    revised[key] = event
        return list(revised.values())

    def _add(
        self, symbol: str, interval: Interval, price: float, volume: float, t: int, now_ms: int
    ) -> BarEvent | None:
        start, end = bar_span(symbol, interval, t)
        series = self._series.get((symbol, interval))
        if series is None:
            series = self._series[(symbol, interval)] = _Series(deque(maxlen=self._history))
        bar = series.open.get(start)
        if bar is not None:
            bar.add(price, volume, t)
            series.changed.add(start)
            series.open_changed()
            return None
        if end + self._grace_ms > now_ms:  # still open by the clock
            if len(series.open) >= MAX_OPEN_BARS:
                return None
            series.open[start] = bar = Bar.of(start, price, volume, t)
            bar.gap = self._outages.overlaps(start, end)
            series.changed.add(start)
            series.open_changed()
            return None
        late = series.closed_bar(start)  # its bar has closed: revise it, or make it
        if late is not None:
            late.add(price, volume, t)
            series.closed_changed()
        else:
            late = Bar.of(start, price, volume, t)
            late.gap = self._outages.overlaps(start, end)
            if not series.insert_closed(late):  # older than the history kept
                return BarEvent.of(symbol, interval, late, final=True, revised=True, partial=True)
        return BarEvent.of(symbol, interval, late, final=True, revised=True)

    def due(self, now_ms: int) -> list[BarEvent]:
        """Bars whose interval (and grace) ended, as finals; changed open bars not
        reported for `live_every` seconds, as live updates."""
        events: list[BarEvent] = []
        now_seconds = now_ms / 1000
        for (symbol, interval), series in self._series.items():
            for start in sorted(series.open):
                if bar_span(symbol, interval, start)[1] + self._grace_ms <= now_ms:
                    bar = series.open.pop(start)
                    series.changed.discard(start)
                    series.open_changed()
                    series.insert_closed(bar)
                    events.append(BarEvent.of(symbol, interval, bar, final=True))
            if series.changed and now_seconds - series.reported_at >= self._live_every:
                series.reported_at = now_seconds
                for start in sorted(series.changed):
                    bar = series.open[start]
                    events.append(BarEvent.of(symbol, interval, bar, final=False))
                series.changed.clear()
        return events

    def upstream_down(self, now_ms: int) -> None:
        """The upstream stopped arriving: every bar still open (its interval not over)
        misses trades from now on; the next live report says so."""
        if not self._outages.began(now_ms):
            return
        for (symbol, interval), series in self._series.items():
            for start, bar in series.open.items():
                if not bar.gap and bar_span(symbol, interval, start)[1] > now_ms:
                    bar.gap = True
                    series.changed.add(start)
                    series.open_changed()

    def upstream_up(self, now_ms: int) -> None:
        self._outages.ended(now_ms)

    def apply(self, event: BarEvent) -> None:
        """Mirror a bar another process aggregated (a cluster follower's book)."""
        key = (event.symbol, event.interval)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(deque(maxlen=self._history))
        bar = Bar.from_dict(event.bar)
        series.open_changed()
        if not event.final:
            series.open[bar.t] = bar
            return
        series.open.pop(bar.t, None)
        existing = series.closed_bar(bar.t)
        if existing is not None:
            series.closed.remove(existing)
        series.insert_closed(bar)

    def load(
        self, symbol: str, interval: Interval, closed: Iterable[Bar], open_bar: Bar | None
    ) -> None:
        """Start a series from stored bars (closed ones oldest first, and the bar that
        was open), replacing what was held. The open bar is open again: `due()` closes
        it, at once if its time has passed, and reports its final."""
        series = _Series(deque(maxlen=self._history))
        for bar in closed:
            series.insert_closed(bar)
        if open_bar is not None:
            series.open[open_bar.t] = open_bar
        self._series[(symbol, interval)] = series

    def restore(
        self, symbol: str, interval: Interval, closed: Iterable[Bar], open_bar: Bar | None
    ) -> None:
        """Add stored bars to a series without replacing what it holds: a bar counted
        since the process started wins over a stored one with the same start."""
        key = (symbol, interval)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(deque(maxlen=self._history))
        for bar in closed:
            if bar.t not in series.open and series.closed_bar(bar.t) is None:
                series.insert_closed(bar)
        if (
            open_bar is not None
            and open_bar.t not in series.open
            and series.closed_bar(open_bar.t) is None
        ):
            open_bar.gap = True  # left open by a process that stopped: its rest unseen
            series.open[open_bar.t] = open_bar  # due() closes it and reports its final
            series.open_changed()

    def held(self) -> Iterator[tuple[str, Interval]]:
        return iter(self._series)
