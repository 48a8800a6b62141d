"""Getting bars into the store without making the fan-out wait for it.

`record(events)` is called with every bar event the book reports (live, final,
revised, partial) and only puts them in a pending map keyed by (symbol, interval,
start), so a bar reported again before it was written is written once, as last
reported (a partial one, a late trade for a bar older than the book holds, is merged
into what is pending, and the store merges it into the bar it keeps); the map
is bounded (MAX_BACKLOG bars: beyond it new events are dropped and counted). `run()`
(the supervisor's `bar-store` task) writes what is pending every FLUSH_SECONDS, so a
closed bar reaches the store within about a second; `flush()` on a clean shutdown
writes the rest, open bars included. Writes go WRITE_CHUNK bars a transaction, and a
failed one ends the try: what a failing store costs the event loop is one chunk, not
the backlog. A write that fails (disk full, database down) keeps its bars pending for
the next try and puts the store in `degraded` (bars are still built, delivered and
served from memory); the next write that succeeds makes it `ok` again (a failed read,
the next read that succeeds: a cluster's follower only reads). A read not answered
within READ_SECONDS has failed, and a call waiting longer than SLOW_SECONDS makes the
state `slow`, so a hung store shows in /health before anything times out. A store
that could not be opened (a corrupt file) is `unusable`: degraded until a restart.
`prune()` enforces each interval's retention, once an hour. Nothing here is on the path
from the upstream to the clients: loads of stored bars happen beside it (bars/loads.py).

On a cluster (cluster/bars.py) only the leader records, and `run()` is one of its
duties; every node reads (`series`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from stock_gateway.bars.book import INTERVALS, Bar, BarBook, BarEvent, Interval
from stock_gateway.bars.loads import StoredBarLoads
from stock_gateway.bars.store import BarStore, MemoryStore, StoreError
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)
T = TypeVar("T")
FLUSH_SECONDS = 0.5
MAX_BACKLOG = 200_000  # bars waiting to be written (~200 B each while they wait)
WRITE_CHUNK = 4096  # bars one transaction writes: what a failed try costs the loop is bounded
PRUNE_SECONDS = 3600.0
READ_SECONDS = 5.0  # a read not answered by then has failed (the store is degraded)
MAX_READS = 16  # reads the store has not answered; past that a read fails at once
SLOW_SECONDS = 1.0  # a call waiting longer makes /health say the store is "slow"


class BarRecorder:
    def __init__(self, store: BarStore, retention: Mapping[Interval, float]) -> None:
        self.store = store
        self._retention = retention  # seconds kept, per interval
        self._pending: dict[tuple[str, Interval, int], BarEvent] = {}
        self._failing: set[str] = set()  # what keeps it degraded: "writes", "reads", "open"
        self.problem: str | None = None  # why it cannot be used at all, and the repair
        self.dropped = 0  # events not kept: the backlog was full
        self.written = 0
        self.deleted = 0
        self.timeouts = 0  # reads the store did not answer within READ_SECONDS
        self.last_write_seconds = 0.0
        self.write_seconds_total = 0.0
        self.writes = 0
        self._calls: dict[object, float] = {}  # store calls under way -> since (monotonic)
        self._reads: set[asyncio.Task[Any]] = set()  # reads under way, answered or not yet
        self.loads = StoredBarLoads(self.stored)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def state(self) -> str:
        """`ok`; `slow` while a store call has waited over SLOW_SECONDS; `degraded` while
        writes or reads fail (or the store could not be opened)."""
        if self._failing:
            return "degraded"
        return "slow" if self.slow else "ok"

    @property
    def slow(self) -> bool:
        now = time.monotonic()
        return any(now - since > SLOW_SECONDS for since in self._calls.values())

    def unusable(self, problem: str) -> None:
        """The store could not be opened (a corrupt file): degraded until a restart after
        the repair `problem` names; nothing is queued for it."""
        self.problem = problem
        self._failed("open", StoreError(problem))

    def record(self, events: Iterable[BarEvent]) -> None:
        if "open" in self._failing:
            return  # it will never be written by this process
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
        """Write what is pending, WRITE_CHUNK bars a transaction; False (and `degraded`)
        at the first that fails: the rest wait for the next try, so a failing store
        costs one bounded chunk a try, however long the backlog."""
        while self._pending:
            if not await self._write_chunk():
                return False
        return True

    async def _write_chunk(self) -> bool:
        pending = self._pending
        batch = {key: pending.pop(key) for key in list(itertools.islice(pending, WRITE_CHUNK))}
        started = time.perf_counter()
        try:
            with self._calling():
                await self.store.write(list(batch.values()))
        except asyncio.CancelledError:
            # Perhaps written, perhaps not: whole bars are kept for the next flush (writing
            # one twice is harmless); a partial one is not, as merging it twice would
            # count its trade twice.
            self._put_back(batch, whole_only=True)
            raise
        except (StoreError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            self._put_back(batch)
            self._failed("writes", exc)
            return False
        elapsed = time.perf_counter() - started
        self.last_write_seconds = elapsed
        self.write_seconds_total += elapsed
        self.writes += 1
        self.written += len(batch)
        self._succeeded("writes")
        return True

    def _put_back(
        self, batch: dict[tuple[str, Interval, int], BarEvent], *, whole_only: bool = False
    ) -> None:
        """Bars not written wait again, bounded as ever; a newer report of the same bar
        recorded meanwhile wins (a partial one is merged with it)."""
        pending = self._pending
        for key, event in batch.items():
            if whole_only and event.partial:
                continue
            newer = pending.get(key)
            if newer is None:
                if len(pending) >= MAX_BACKLOG:
                    self.dropped += 1
                    continue
                pending[key] = event
            elif event.partial or newer.partial:
                pending[key] = event.merged(newer)

    def drop_pending(self) -> int:
        """Forget what is pending (a leadership ended and could not write it: the next
        leader records those bars again from Redis); how many."""
        dropped, self._pending = len(self._pending), {}
        return dropped

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            logger.error("bar store degraded: %s fail (bars kept in memory) error=%s",
                         what, exc)  # fmt: skip
        self._failing.add(what)

    def _succeeded(self, what: str) -> None:
        # A write that succeeds heals any failure (the store answers); a read heals only
        # failed reads, never writes still failing (a follower only ever reads).
        if not self._failing:
            return
        self._failing -= {"writes", "reads"} if what == "writes" else {what}
        if not self._failing:
            logger.warning("bar store %s succeed again", what)

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """A store call under way, for the `slow` state."""
        token = object()
        self._calls[token] = time.monotonic()
        try:
            yield
        finally:
            del self._calls[token]

    async def _read(self, call: Callable[[], Awaitable[T]], timeout: float = READ_SECONDS) -> T:
        """The store read's answer, or TimeoutError once `timeout` seconds have passed.
        The read runs in a task of its own that the caller stops waiting for (a driver
        cleaning up a cancelled query can hang on a hung server too); at most MAX_READS
        of them, so a store that never answers holds a bounded number."""
        if len(self._reads) >= MAX_READS:
            raise TimeoutError(f"{MAX_READS} bar store reads unanswered")

        async def tracked() -> T:
            with self._calling():
                return await call()

        reading = asyncio.create_task(tracked())
        self._reads.add(reading)
        reading.add_done_callback(self._read_ended)
        done, _ = await asyncio.wait({reading}, timeout=max(timeout, 0.0))
        if not done:
            self.timeouts += 1
            raise TimeoutError(f"no answer from the bar store in {timeout:.1f} s")
        return reading.result()

    def _read_ended(self, reading: asyncio.Task[Any]) -> None:
        self._reads.discard(reading)
        if not reading.cancelled():
            reading.exception()  # retrieved: a read nobody waited for any more may fail

    def stop(self) -> None:
        """Stop waiting for reads the store has not answered (the gateway stops)."""
        for reading in list(self._reads):
            reading.cancel()

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
                with self._calling():
                    deleted += await self.store.delete_before(
                        interval, now_ms - int(seconds * 1000)
                    )
            except (StoreError, OSError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                logger.warning("bar store retention failed interval=%s error=%s", interval, exc)
        self.deleted += deleted
        return deleted

    # -- reading back ------------------------------------------------------------------

    def forget(self, symbol: str) -> None:
        """The book dropped `symbol`: load its stored bars again when it comes back."""
        self.loads.forget(symbol)

    async def load(self, book: BarBook, symbols: Iterable[str], history: int) -> None:
        """Put each symbol's stored bars (the newest `history` closed ones per interval
        and the open ones) in the book before it counts the symbol's first trade, so a
        late trade revises the stored bar instead of replacing it (bars/loads.py; the
        upstream's trades use `loads.hold_back`, which never waits). A store that cannot
        be read in time leaves the book as it is (degraded)."""
        await self.loads.load(book, symbols, history)

    async def stored(
        self, symbol: str, history: int, timeout: float = READ_SECONDS
    ) -> dict[Interval, tuple[list[Bar], Bar | None]] | None:
        """Each interval's stored bars of `symbol`: the newest `history` closed ones,
        oldest first, and the one open when last written; None (degraded) if the store
        cannot be read within `timeout` seconds."""
        end = int(time.time() * 1000) + 86_400_000

        async def read_all() -> dict[Interval, tuple[list[Bar], Bar | None]]:
            opened: dict[Interval, Bar] = dict(await self.store.open_bars(symbol))
            return {
                interval: (
                    await self.store.read(symbol, interval, 0, end, history),
                    opened.get(interval),
                )
                for interval in INTERVALS
            }

        try:
            found = await self._read(read_all, timeout)
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
            stored = await self._read(
                partial(self.store.read, symbol, interval, start_ms, end_ms, limit)
            )
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
