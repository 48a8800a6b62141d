"""`postgresql://...`: one shared bar store for a cluster and for long histories.

The only module that imports asyncpg (a maintained async driver: no thread, no
blocking). A small pool; every statement, and every wait for a connection of the pool,
has COMMAND_TIMEOUT seconds, so a database that stops answering is a `StoreError` (the
recorder degrades) rather than a hang; the recorder bounds its reads more tightly.
The schema is bars/sqlite_store.py's, with `final` a boolean; a batch is one
`INSERT ... ON CONFLICT DO UPDATE` of arrays (unnest), so a flush is one round trip
(two with partial bars, merged into their rows, in the same transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from stock_gateway.bars.book import Bar, BarEvent, Interval
from stock_gateway.bars.store import (
    COLUMNS,
    READ_COLUMNS,
    StoreError,
    bar_of,
    ended_before,
    refuse_other_feed,
    row_of,
)

COMMAND_TIMEOUT = 10.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    t BIGINT NOT NULL,
    o DOUBLE PRECISION NOT NULL, h DOUBLE PRECISION NOT NULL,
    l DOUBLE PRECISION NOT NULL, c DOUBLE PRECISION NOT NULL,
    v DOUBLE PRECISION NOT NULL,
    n INTEGER NOT NULL,
    final BOOLEAN NOT NULL,
    gap BOOLEAN NOT NULL DEFAULT false,
    first_t BIGINT, last_t BIGINT,
    PRIMARY KEY (symbol, interval, t)
);
ALTER TABLE bars ADD COLUMN IF NOT EXISTS gap BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE bars ADD COLUMN IF NOT EXISTS first_t BIGINT;
ALTER TABLE bars ADD COLUMN IF NOT EXISTS last_t BIGINT;
"""
# Which feed writes this database (bars/sqlite_store.py's table and rule).
META = "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
CLAIM = "INSERT INTO store_meta (key, value) VALUES ('feed', $1) ON CONFLICT DO NOTHING"
KEPT = "SELECT value FROM store_meta WHERE key = 'feed'"
# Retention deletes an interval's old bars across every symbol; the primary key leads
# with the symbol, so without this index each hourly prune scans the whole table.
AGE_INDEX = "CREATE INDEX IF NOT EXISTS bars_by_age ON bars (interval, t)"
PRUNE = "DELETE FROM bars WHERE interval = $1 AND t < $2"
ROWS = f"""
INSERT INTO bars ({COLUMNS}) SELECT * FROM unnest(
    $1::text[], $2::text[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[],
    $7::float8[], $8::float8[], $9::int[], $10::bool[], $11::bool[], $12::bigint[],
    $13::bigint[])
ON CONFLICT (symbol, interval, t) DO UPDATE SET"""
# As in SQLite: a bar still open never replaces a final one; unknown times keep theirs.
UPSERT = f"""{ROWS}
    o = EXCLUDED.o, h = EXCLUDED.h, l = EXCLUDED.l, c = EXCLUDED.c, v = EXCLUDED.v,
    n = EXCLUDED.n, final = EXCLUDED.final, gap = EXCLUDED.gap,
    first_t = coalesce(EXCLUDED.first_t, bars.first_t),
    last_t = coalesce(EXCLUDED.last_t, bars.last_t)
WHERE EXCLUDED.final OR NOT bars.final
"""
# A partial bar (a late trade for a bar older than the book holds) counts in the row.
MERGE = f"""{ROWS}
    o = CASE WHEN EXCLUDED.first_t < coalesce(bars.first_t, bars.t) THEN EXCLUDED.o
        ELSE bars.o END,
    c = CASE WHEN EXCLUDED.last_t >= coalesce(bars.last_t, bars.t) THEN EXCLUDED.c
        ELSE bars.c END,
    first_t = least(EXCLUDED.first_t, coalesce(bars.first_t, bars.t)),
    last_t = greatest(EXCLUDED.last_t, coalesce(bars.last_t, bars.t)),
    h = greatest(bars.h, EXCLUDED.h), l = least(bars.l, EXCLUDED.l),
    v = least(bars.v, 1.7976931348623157e308 - EXCLUDED.v) + EXCLUDED.v,
    n = bars.n + EXCLUDED.n,
    final = true, gap = bars.gap OR EXCLUDED.gap OR NOT bars.final
"""
ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class PostgresStore:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self._url = url
        self.skipped = 0
        self._pool: Any = None

    async def open(self) -> None:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=1, max_size=4, command_timeout=COMMAND_TIMEOUT
                )
                await self._pool.execute(SCHEMA)
                await self._pool.execute(AGE_INDEX)
        except (*ERRORS, ValueError) as exc:
            # The URL is never shown: it may carry a password.
            raise StoreError(f"postgresql: {type(exc).__name__}: {_safe(exc, self._url)}") from None

    async def claim(self, feed: str) -> None:
        await self._call("execute", META)
        await self._call("execute", CLAIM, feed)
        refuse_other_feed(str(await self._call("fetchval", KEPT)), feed)

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        if self._pool is None:
            raise StoreError("the bar store is closed")
        try:
            # A pool's own fetch waits for a free connection without a bound.
            async with self._pool.acquire(timeout=COMMAND_TIMEOUT) as connection:
                return await getattr(connection, method)(query, *args)
        except ERRORS as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {_safe(exc, self._url)}") from None

    async def write(self, events: Sequence[BarEvent]) -> None:
        if self._pool is None:
            raise StoreError("the bar store is closed")
        try:
            async with (
                self._pool.acquire(timeout=COMMAND_TIMEOUT) as connection,
                connection.transaction(),
            ):
                for query, partial in ((UPSERT, False), (MERGE, True)):
                    rows = [row_of(event) for event in events if event.partial is partial]
                    if rows:  # one round trip per kind: arrays of columns
                        await connection.execute(query, *map(list, zip(*rows, strict=True)))
        except ERRORS as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {_safe(exc, self._url)}") from None

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        rows = await self._call(
            "fetch",
            "SELECT t, o, h, l, c, v, n, gap OR NOT final, first_t, last_t FROM bars "
            "WHERE symbol = $1 AND interval = $2 "
            "AND (final OR t < $3) AND t >= $4 AND t < $5 ORDER BY t DESC LIMIT $6",
            symbol, interval, ended_before(interval), start_ms, end_ms, limit,
        )  # fmt: skip
        return self._bars(reversed(rows), interval)

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        rows = await self._call(
            "fetch",
            f"SELECT interval, {READ_COLUMNS} FROM bars WHERE symbol = $1 AND NOT final",
            symbol,
        )
        found: list[tuple[Interval, Bar]] = []
        for interval, *row in rows:
            found.extend((interval, bar) for bar in self._bars([row], interval))
        return found

    def _bars(self, rows: Any, interval: str) -> list[Bar]:
        bars: list[Bar] = []
        for row in rows:
            try:
                bars.append(bar_of(tuple(row), interval))
            except (ValueError, TypeError, KeyError):
                self.skipped += 1
        return bars

    async def delete_before(self, interval: Interval, before_ms: int) -> int:
        status = await self._call("execute", PRUNE, interval, before_ms)
        return int(str(status).rsplit(" ", 1)[-1])

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:  # a hung server must not hold the shutdown
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
            except TimeoutError:
                pool.terminate()


def _safe(exc: BaseException, url: str) -> str:
    """The error's text without the URL (and so without its password)."""
    return str(exc).replace(url, "BAR_STORE_URL")
