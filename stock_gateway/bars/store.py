"""Where bars are kept past the process: one small interface, chosen by `BAR_STORE_URL`.

- `memory://`: nothing outlives the process (the book's BAR_HISTORY bars are all).
- `sqlite:///<path>` (the default, `sqlite:///data/bars.sqlite3`, relative to the working
  directory; `sqlite:////abs/path` for an absolute one): one file, stdlib `sqlite3` on a
  thread of its own (bars/sqlite_store.py).
- `postgresql://...`: one shared database for a cluster (bars/postgres_store.py, the
  only module that imports asyncpg).

A store keeps one row per (symbol, interval, start): the bar as last reported (its
`gap` flag and the times of its first and last trade included), and whether it was
final; a `partial` event (a late trade for a bar older than the book holds) is merged
into the row instead of replacing it. Writes come in batches from
`BarRecorder` (bars/recorder.py); `read` returns a series' closed bars, oldest first;
`delete_before` enforces retention. A row that is not a well-formed candle
(bars/book.py `Bar.from_dict`) is skipped and counted (`skipped`), never trusted.
`StoreError` is anything the store could not do: at start-up it names `BAR_STORE_URL`
and stops the gateway (a misconfiguration), except `CorruptStore` (a damaged file), with
which it starts degraded and says how to repair it; at run time the recorder degrades
to memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from stock_gateway.bars.book import INTERVAL_MS, Bar, BarEvent, Interval

DEFAULT_URL = "sqlite:///data/bars.sqlite3"
# Demo mode's own default: the simulator's candles never mix with a real feed's.
DEMO_URL = "sqlite:///data/demo-bars.sqlite3"
# Which feed wrote a store: a store is claimed by the first and refuses the other.
FEEDS = ("finnhub", "demo")
MAX_READ = 10_000  # bars one read returns at most (GET /bars's `limit` is capped here)


class StoreError(Exception):
    """The store cannot be opened, read or written; the message says why."""


def default_url(demo: bool) -> str:
    return DEMO_URL if demo else DEFAULT_URL


def refuse_other_feed(kept: str, feed: str) -> None:
    """The one refusal of a store another feed wrote (the setting is named by wiring)."""
    if kept != feed:
        raise StoreError(
            f"it holds bars from the {kept} feed and this gateway runs on the {feed} feed; "
            "demo mode and a real feed need different stores"
        )


class CorruptStore(StoreError):
    """The store's data is damaged (not a misconfiguration): the gateway starts without
    it, degraded; the message names the repair."""


class BarStore(Protocol):
    name: str  # "memory", "sqlite", "postgresql": for /health and logs
    skipped: int  # malformed rows read

    async def open(self) -> None:
        """Connect (or create the schema); StoreError if unusable."""

    async def claim(self, feed: str) -> None:
        """Record that `feed` writes here; StoreError if another feed's bars are kept."""

    async def write(self, events: Sequence[BarEvent]) -> None:
        """Keep each event's bar (a later one for the same start replaces it)."""

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        """The closed bars with start_ms <= t < end_ms: the newest `limit`, oldest first."""

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        """The bars of `symbol` that were open when last written."""

    async def delete_before(self, interval: Interval, before_ms: int) -> int:
        """Delete the interval's bars that started before `before_ms`; how many."""

    async def close(self) -> None: ...


class MemoryStore:
    """`memory://`: keeps nothing; the book's bounded history is all there is."""

    name = "memory"
    skipped = 0

    async def open(self) -> None:
        return None

    async def claim(self, feed: str) -> None:
        return None

    async def write(self, events: Sequence[BarEvent]) -> None:
        return None

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        return []

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        return []

    async def delete_before(self, interval: Interval, before_ms: int) -> int:
        return 0

    async def close(self) -> None:
        return None


COLUMNS = "symbol, interval, t, o, h, l, c, v, n, final, gap, first_t, last_t"


def row_of(event: BarEvent) -> tuple[Any, ...]:
    """An event as a row of COLUMNS."""
    bar = event.bar
    return (
        event.symbol,
        event.interval,
        bar["t"],
        bar["o"],
        bar["h"],
        bar["l"],
        bar["c"],
        bar["v"],
        bar["n"],
        event.final,
        bar.get("gap", False),
        *(event.times if event.times != (0, 0) else (None, None)),  # unknown: NULL
    )


READ_COLUMNS = "t, o, h, l, c, v, n, gap, first_t, last_t"


def bar_of(row: Sequence[Any], interval: str) -> Bar:
    """A stored row of READ_COLUMNS as a bar; ValueError (or TypeError) if it is not a
    well-formed candle of the interval. A row read as closed that was written open (its
    process stopped before the bar ended) is read with gap true (the query says so)."""
    *candle, first_t, last_t = row
    fields = dict(zip(("t", "o", "h", "l", "c", "v", "n", "gap"), candle, strict=True))
    if fields["gap"] in (0, 1):  # sqlite has no booleans
        fields["gap"] = bool(fields["gap"])
    bar = Bar.from_dict(fields)
    if isinstance(first_t, int) and isinstance(last_t, int):  # NULL: written before them
        bar.first_t, bar.last_t = first_t, last_t
    length = INTERVAL_MS.get(interval)  # type: ignore[call-overload]
    if length is None or bar.t % _alignment(length) != 0 or bar.t < 0:
        raise ValueError("not a bar start of its interval")
    return bar


def ended_before(interval: Interval) -> int:
    """Bars that started before this have ended: a bar left open by a process that
    stopped (or was killed) counts as closed once its interval is over."""
    return int(time.time() * 1000) - INTERVAL_MS[interval]


def _alignment(length: int) -> int:
    # A daily bar starts at an exchange's midnight, a whole hour (or half-hour) of UTC.
    return math.gcd(length, 900_000)
