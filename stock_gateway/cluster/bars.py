"""Bars on a cluster: the leader aggregates, Redis keeps them, every process mirrors them.

- **The leader** (`LeaderBars`, one per leadership) counts the trades its feed parsed
  into a `BarBook`, every `BAR_CLOCK_SECONDS` closes what is due, and writes each event to
  Redis in one transaction: a closed bar replaces any bar with the same start in the
  sorted set `{prefix}:bars:{interval}:{symbol}` (score: its start; at most
  BAR_HISTORY kept), an open bar goes to the hash `{prefix}:bars-open`, and the event
  is published on `{prefix}:bars`. Before it counts a symbol's first trade it loads
  that symbol's stored bars, so a new leader after a failover continues the open bar
  and never writes a closed bar twice (the score replaces); the bar store's are
  loaded beside the feed (bars/loads.py): the symbol's trades wait for them, bounded,
  and prices never do. Trades the old leader had
  counted but not yet stored (at most a second of them) and trades during the
  failover itself are not in the bars.
- **With a bar store** (`BAR_STORE_URL=postgresql://...`) the leader also records every
  event into it (bars/recorder.py; writing it is one of the leader's duties, see
  cluster/leader.py), and a new leader starts a symbol from Redis's bars merged with
  the store's (Redis may have lost them, or never had the symbol): no bar is lost or
  doubled, as one start is one bar in both. The closed bars Redis has and the store
  lacks (the old leader was killed before it wrote them) are recorded again, an
  idempotent upsert. Every process reads the store for `GET /bars`.
- **Every process** (`MirrorBars`) loads a symbol's stored bars when its clients start
  wanting it, then applies the published events to a local book, which serves history
  on `subscribe_bars` and `GET /bars` without aggregating anything.

Stored bars of symbols nobody in the cluster wants are deleted by the leader. A stored
or published bar that is not a well-formed candle (another version's, or a damaged row)
is skipped and counted (`StoredBars.skipped`: `bars_skipped` in `/health`), never
raised: one bad row must not stop a process from serving the symbol. This module never
talks to clients and never stores anything but bars.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

from redis.exceptions import RedisError

from stock_gateway.bars.book import INTERVALS, Bar, BarBook, BarEvent, Interval
from stock_gateway.bars.loads import Stored, StoredBarLoads
from stock_gateway.bars.outages import Outages
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.cluster.stored_bars import StoredBars, decode_event
from stock_gateway.delivery.bar_delivery import BAR_CLOCK_SECONDS, TRADES_PER_SLICE
from stock_gateway.market_data.model import Trade, UpstreamState
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)
LOAD_WAIT_SECONDS = 2.0  # a subscribe_bars waits at most this long for stored history
MAX_PENDING = 10_000  # closed bars kept for a retry while Redis is unreachable


class LeaderBars:
    """One leadership's aggregation: trades in, events stored and published."""

    def __init__(
        self,
        stored: StoredBars,
        carried: Callable[[], AbstractSet[str]],
        *,
        history: int,
        grace: float,
        recorder: BarRecorder | None = None,
    ) -> None:
        self._stored = stored
        self._carried = carried  # the cluster-wide union the feed follows
        self._history = history
        # A leadership is blind until its feed connects: bars overlapping that say so.
        self._book = BarBook(history=history, grace=grace, outages=Outages(down_since=_now_ms()))
        self._recorder = recorder  # the bar store, if any: every event is kept there too
        self._lock = asyncio.Lock()  # trades and ticks take turns with the book and Redis
        # The store's bars load beside the feed (bars/loads.py): a symbol's trades wait
        # for them, nothing else does; what they make is stored by the next tick.
        self._loads = None if recorder is None else StoredBarLoads(recorder.stored, self._restore)
        self._from_redis: dict[str, dict[Interval, list[Bar]]] = {}  # until the store's come
        self._counted_late: list[BarEvent] = []
        self._continued: set[str] = set()  # symbols started from what was stored

    async def trades_received(self, trades: list[Trade]) -> None:
        async with self._lock:
            fresh = {trade.symbol for trade in trades} - self._continued
            if fresh:  # continue from what an earlier leader stored
                await self._continue(fresh)
                self._continued |= fresh
            if self._loads is not None:
                trades = self._loads.hold_back(self._book, trades, self._history, self._late)
            for start in range(0, len(trades), TRADES_PER_SLICE):
                if start:
                    await asyncio.sleep(0)  # a huge upstream message, a slice at a time
                chunk = trades[start : start + TRADES_PER_SLICE]
                events = self._book.add_trades(chunk, _now_ms())
                if events:
                    self._record(events)
                    await self._stored.store(events, self._history)

    async def _continue(self, fresh: set[str]) -> None:
        """Start each symbol's series from what earlier leaders stored. An open bar the
        last leader left is open here until due() closes it, so its final is stored and
        published like any other."""
        loaded = await self._stored.load(fresh)
        for (symbol, interval), (closed, still_open) in loaded.items():
            if still_open is not None:
                still_open.gap = True  # left open by a leader that stopped: its rest unseen
            self._book.load(symbol, interval, closed, still_open)
            if self._recorder is not None:
                self._from_redis.setdefault(symbol, {})[interval] = closed

    def _restore(self, book: BarBook, symbol: str, stored: Stored | None) -> None:
        """The store's bars of a symbol beside Redis's (which win); closed bars Redis has
        and the store lacks, or holds with fewer trades (the old leader was killed
        before its write), are written again, their trade times unknown here (Redis
        keeps none), so the store's are kept."""
        from_redis = self._from_redis.pop(symbol, {})
        for interval in INTERVALS:
            kept, kept_open = (stored or {}).get(interval, ([], None))
            book.restore(symbol, interval, kept, kept_open)
            in_store = {bar.t: bar.n for bar in kept}
            self._record(
                [
                    BarEvent(symbol, interval, bar.as_dict(), final=True)
                    for bar in from_redis.get(interval, [])
                    if in_store.get(bar.t, 0) < bar.n
                ]
            )

    async def loaded(self, symbols: Iterable[str]) -> None:
        """Wait until the store's bars of `symbols` (those loading) are in the book."""
        if self._loads is not None:
            await self._loads.wait(symbols)

    def _late(self, trades: list[Trade]) -> None:
        """Trades held while their symbol's stored bars loaded, counted after them."""
        events = self._book.add_trades(trades, _now_ms())
        self._record(events)
        self._counted_late.extend(events)  # to Redis with the next tick's

    def upstream_state_changed(self, state: UpstreamState) -> None:
        if state == "connected":
            self._book.upstream_up(_now_ms())
        else:
            self._book.upstream_down(_now_ms())

    def _record(self, events: list[BarEvent]) -> None:
        if self._recorder is not None:
            self._recorder.record(events)

    def record_open(self) -> None:
        """The leadership ends: record every open bar, so the store has them too."""
        if self._recorder is not None:
            self._recorder.open_bars_of(self._book)

    async def run(self) -> None:
        """Close bars on the clock, send live updates, and drop symbols nobody wants.
        A Redis error costs this tick's events (logged), never the leadership."""
        pending: list[BarEvent] = []  # due but not yet stored: retried next tick
        while True:
            await asyncio.sleep(BAR_CLOCK_SECONDS)
            async with self._lock:
                due = self._book.due(_now_ms())
                self._record(due)
                pending += self._counted_late + due
                self._counted_late = []
                unwanted = (self._book.symbols | self._continued) - self._carried()
                self._continued -= unwanted
                for symbol in unwanted:
                    self._book.forget(symbol)
                    if self._loads is not None:
                        self._loads.forget(symbol)
                try:
                    if pending:
                        await self._stored.store(pending, self._history)
                    await self._stored.delete(unwanted)
                except (RedisError, OSError, TimeoutError) as exc:
                    raise_if_cancelling(exc)
                    logger.warning("cluster bars not stored events=%d error=%s",
                                   len(pending), type(exc).__name__)  # fmt: skip
                    pending = [event for event in pending if event.final][-MAX_PENDING:]
                    continue
                pending = []


class MirrorBars:
    """This process's copy of the cluster's bars, for its own clients."""

    def __init__(self, stored: StoredBars, book: BarBook) -> None:
        self._stored = stored
        self._book = book
        self._loaded: dict[str, asyncio.Event] = {}

    async def load(self, symbols: set[str]) -> None:
        """Start mirroring symbols this process's clients began to want."""
        for (symbol, interval), (closed, still_open) in (await self._stored.load(symbols)).items():
            self._book.load(symbol, interval, closed, still_open)
        for symbol in symbols:
            self._loaded.setdefault(symbol, asyncio.Event()).set()

    def forget(self, symbols: set[str]) -> None:
        for symbol in symbols:
            self._loaded.pop(symbol, None)
            self._book.forget(symbol)

    def received(self, data: bytes) -> list[BarEvent]:
        """A published event, kept in the book if this process mirrors its symbol: the
        events to deliver to this process's clients."""
        event = decode_event(data)
        if event is None:
            self._stored.skipped += 1
        loaded = self._loaded.get(event.symbol) if event is not None else None
        if event is None or loaded is None or not loaded.is_set():
            return []
        self._book.apply(event)
        return [event]

    async def wait_loaded(self, symbols: list[str]) -> None:
        """Until these symbols' stored bars are here (bounded: an empty history then)."""
        try:
            async with asyncio.timeout(LOAD_WAIT_SECONDS):
                for symbol in symbols:
                    await self._loaded.setdefault(symbol, asyncio.Event()).wait()
        except TimeoutError:
            logger.warning("cluster bars not loaded in time symbols=%d", len(symbols))
            for symbol in symbols:  # waited for in vain: no event left behind
                loaded = self._loaded.get(symbol)
                if loaded is not None and not loaded.is_set():
                    del self._loaded[symbol]


def _now_ms() -> int:
    return int(time.time() * 1000)
