"""Getting bars into the store without making the fan-out wait for it.

`record(events)` is called with every bar event the book reports (live, final,
revised, partial) and only puts them in a pending map keyed by (symbol, interval,
start), so a bar reported again before it was written is written once, as last
reported (a partial one, a late trade for a bar older than the book holds, is merged
into what is pending, and the store merges it into the bar it keeps); the map
is bounded (MAX_BACKLOG bars: beyond it new events are dropped and counted). `run()`
(the supervisor's `bar-store` task) writes what is pending every FLUSH_SECONDS, so a
closed bar reaches the store within about a second; `flush()` on a clean shutdown
writes the rest, open bars included. A write that fails (disk full, database down)
keeps its bars pending for the next try and puts the store in `degraded` (bars are
still built, delivered and served from memory); the next write that succeeds makes it
`ok` again (a failed read, the next read that succeeds: a cluster's follower only
reads). `prune()` enforces each interval's retention, once an hour.

On a cluster (cluster/bars.py) only the leader records, and `run()` is one of its
duties; every node reads (`series`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from stock_gateway.bars.book import INTERVALS, Bar, BarBook, BarEvent, Interval
from stock_gateway.bars.store import BarStore, MemoryStore, StoreError
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)
FLUSH_SECONDS = 0.5
MAX_BACKLOG = 200_000  # bars waiting to be written (~200 B each while they wait)
PRUNE_SECONDS = 3600.0


class BarRecorder:
    def __init__(self, store: BarStore, retention: Mapping[Interval, float]) -> None:
        self.store = store
        self._retention = retention  # seconds kept, per interval
        self._pending: dict[tuple[str, Interval, int], BarEvent] = {}
        self.state = "ok"
        self._failing: set[str] = set()  # what keeps it degraded: "writes", "reads"
        self.dropped = 0  # events not kept: the backlog was full
        self.written = 0
        self.deleted = 0
        self.last_write_seconds = 0.0
        self.write_seconds_total = 0.0
        self.writes = 0
        self._loaded: set[str] = set()  # symbols whose stored bars are in the book
        self._loading: dict[str, asyncio.Event] = {}  # set once they are
        self._reads: set[asyncio.Task[None]] = set()  # loads under way (each ends by itself)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def record(self, events: Iterable[BarEvent]) -> None:
        pending = self._pending
        for event in events:
            key = (event.symbol, event.interval, event.bar["t"])
            earlier = pending.get(key)
            if earlier is None and len(pending) >= MAX_BACKLOG:
                self.dropped += 1
                continue
            if earlier is not None and (event.partial or earlier.partial):
                event = earlier.merged(event)  # a trade the other report lacks
            pending[key] = event

    async def flush(self) -> bool:
        """Write what is pending; False (and `degraded`) if the store failed."""
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        started = time.perf_counter()
        try:
            await self.store.write(list(batch.values()))
        except asyncio.CancelledError:
            # Perhaps written, perhaps not: whole bars are kept for the next flush (writing
            # one twice is harmless); a partial one is not, as merging it twice would
            # count its trade twice.
            newer, self._pending = self._pending, {}
            self.record(event for event in batch.values() if not event.partial)
            self.record(newer.values())
            raise
        except (StoreError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            newer, self._pending = self._pending, {}
            self.record(batch.values())  # kept for the next try, bounded as ever,
            self.record(newer.values())  # newer reports of the same bars winning
            self._failed("writes", exc)
            return False
        elapsed = time.perf_counter() - started
        self.last_write_seconds = elapsed
        self.write_seconds_total += elapsed
        self.writes += 1
        self.written += len(batch)
        self._succeeded("writes")
        return True

    def drop_pending(self) -> int:
        """Forget what is pending (a leadership ended and could not write it: the next
        leader records those bars again from Redis); how many."""
        dropped, self._pending = len(self._pending), {}
        return dropped

    def _failed(self, what: str, exc: BaseException) -> None:
        if self.state == "ok":
            logger.error("bar store degraded: %s fail (bars kept in memory) error=%s",
                         what, exc)  # fmt: skip
        self.state = "degraded"
        self._failing.add(what)

    def _succeeded(self, what: str) -> None:
        # A write that succeeds heals any failure (the store answers); a read heals only
        # failed reads, never writes still failing (a follower only ever reads).
        self._failing -= {"writes", "reads"} if what == "writes" else {what}
        if self.state != "ok" and not self._failing:
            logger.warning("bar store %s succeed again", what)
            self.state = "ok"

    async def run(self) -> None:
        next_prune = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_SECONDS
                await self.prune()

    async def prune(self, now_ms: int | None = None) -> int:
        """Delete every interval's bars past its retention; how many."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        deleted = 0
        for interval, seconds in self._retention.items():
            try:
                deleted += await self.store.delete_before(interval, now_ms - int(seconds * 1000))
            except (StoreError, OSError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                logger.warning("bar store retention failed interval=%s error=%s", interval, exc)
        self.deleted += deleted
        return deleted

    # -- reading back ------------------------------------------------------------------

    def forget(self, symbol: str) -> None:
        """The book dropped `symbol`: load its stored bars again when it comes back."""
        self._loaded.discard(symbol)

    async def load(self, book: BarBook, symbols: Iterable[str], history: int) -> None:
        """Put each symbol's stored bars (the newest `history` closed ones per interval
        and the open ones) in the book before it counts the symbol's first trade, so a
        late trade revises the stored bar instead of replacing it with a bar of one
        trade. A store that cannot be read leaves the book as it is (degraded)."""
        symbols = set(symbols)
        # Another caller may be loading some of these (a subscribe_bars while the first
        # trades come): wait for it, or the trades would count before the stored bars.
        in_flight = {self._loading[symbol] for symbol in symbols if symbol in self._loading}
        fresh = [symbol for symbol in symbols if symbol not in self._loaded]
        if fresh:
            self._loaded.update(fresh)
            loaded = asyncio.Event()
            self._loading.update(dict.fromkeys(fresh, loaded))
            # Shielded: a caller that goes away (a client closing mid-subscribe) must not
            # leave the load half done while others wait for it.
            reading = asyncio.create_task(self._read_into(book, fresh, history, loaded))
            self._reads.add(reading)
            reading.add_done_callback(self._reads.discard)
            await asyncio.shield(reading)
        for other in in_flight:
            await other.wait()

    async def _read_into(
        self, book: BarBook, symbols: list[str], history: int, loaded: asyncio.Event
    ) -> None:
        try:
            for symbol in symbols:
                stored = await self.stored(symbol, history)
                if stored is None:
                    break  # degraded: the book goes on without them
                for interval, (closed, open_bar) in stored.items():
                    book.restore(symbol, interval, closed, open_bar)
        finally:
            for symbol in symbols:
                if self._loading.get(symbol) is loaded:  # not a later load's
                    del self._loading[symbol]
            loaded.set()

    async def stored(
        self, symbol: str, history: int
    ) -> dict[Interval, tuple[list[Bar], Bar | None]] | None:
        """Each interval's stored bars of `symbol`: the newest `history` closed ones,
        oldest first, and the one open when last written; None (degraded) if the store
        cannot be read."""
        end = int(time.time() * 1000) + 86_400_000
        try:
            opened: dict[Interval, Bar] = dict(await self.store.open_bars(symbol))
            found = {
                interval: (
                    await self.store.read(symbol, interval, 0, end, history),
                    opened.get(interval),
                )
                for interval in INTERVALS
            }
        except (StoreError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            self._failed("reads", exc)
            return None
        self._succeeded("reads")
        return found

    def open_bars_of(self, book: BarBook) -> None:
        """Record every open bar the book holds (a clean shutdown writes them too)."""
        for symbol, interval in list(book.held()):
            for bar in book.parts(symbol, interval)[1]:
                self.record([BarEvent.of(symbol, interval, bar, final=False)])

    async def series(
        self, book: BarBook, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        """A series' stored closed bars with what the book holds (its bars win: they
        are newer, and the open one is only there), the newest `limit`, oldest first.
        A store that cannot be read serves the book's alone."""
        bars = {bar.t: bar for bar in book.bars(symbol, interval) if start_ms <= bar.t < end_ms}
        try:
            stored = await self.store.read(symbol, interval, start_ms, end_ms, limit)
        except (StoreError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            self._failed("reads", exc)
            stored = []
        else:
            self._succeeded("reads")
        for bar in stored:
            bars.setdefault(bar.t, bar)
        return [bars[t] for t in sorted(bars)[-limit:]]


def open_store(url: str) -> BarStore:
    """The store `url` names (not yet opened); StoreError naming BAR_STORE_URL if none."""
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        from stock_gateway.bars.sqlite_store import SqliteStore

        return SqliteStore(rest[1:])
    if scheme in ("postgresql", "postgres"):
        from stock_gateway.bars.postgres_store import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        "BAR_STORE_URL must be memory://, sqlite:///<path> or postgresql://...; got "
        f"{scheme or url!r}"  # the scheme only: a URL may carry a password
    )
