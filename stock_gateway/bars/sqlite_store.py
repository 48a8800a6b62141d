"""`sqlite:///<path>`: the embedded bar store, one file (and its WAL), for one process.

The standard library's `sqlite3` on one thread of its own (every call goes through a
single-worker executor, so the connection is only ever used by that thread and the
event loop never waits on the disk). WAL mode: readers never block the writer, and a
crash loses at most the transaction being written. Opening checks the file
(`PRAGMA quick_check`): an unwritable file is a `StoreError` at start-up, a corrupt
one a `CorruptStore` naming the repair (the gateway starts without it, degraded).

Schema (docs/bars.md "Stored bars"): `bars(symbol, interval, t, o, h, l, c, v, n,
final, gap, first_t, last_t)`, primary key (symbol, interval, t), without rowid, so a
series' bars are stored together in start order and a revision replaces its row (a
partial bar merges into it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from stock_gateway.bars.book import Bar, BarEvent, Interval
from stock_gateway.bars.store import (
    COLUMNS,
    READ_COLUMNS,
    CorruptStore,
    StoreError,
    bar_of,
    ended_before,
    refuse_other_feed,
    row_of,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    t INTEGER NOT NULL,
    o REAL NOT NULL, h REAL NOT NULL, l REAL NOT NULL, c REAL NOT NULL,
    v REAL NOT NULL,
    n INTEGER NOT NULL,
    final INTEGER NOT NULL,
    gap INTEGER NOT NULL DEFAULT 0,
    first_t INTEGER, last_t INTEGER,
    PRIMARY KEY (symbol, interval, t)
) WITHOUT ROWID
"""
# Which feed writes this file (bars/store.py FEEDS); a file from before has no row and is
# claimed by the first gateway that opens it.
META = "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
CLAIM = "INSERT INTO store_meta (key, value) VALUES ('feed', ?) ON CONFLICT (key) DO NOTHING"
KEPT = "SELECT value FROM store_meta WHERE key = 'feed'"
# Columns a file written by an earlier version lacks.
ADDED = {"gap": "INTEGER NOT NULL DEFAULT 0", "first_t": "INTEGER", "last_t": "INTEGER"}
# A revision replaces its row, except that a bar still open never replaces a final one
# (an old leader's last writes after a new one's), and unknown trade times keep theirs.
UPSERT = f"""
INSERT INTO bars ({COLUMNS}) VALUES ({", ".join("?" * 13)})
ON CONFLICT (symbol, interval, t) DO UPDATE SET
    o = excluded.o, h = excluded.h, l = excluded.l, c = excluded.c, v = excluded.v,
    n = excluded.n, final = excluded.final, gap = excluded.gap,
    first_t = coalesce(excluded.first_t, bars.first_t),
    last_t = coalesce(excluded.last_t, bars.last_t)
WHERE excluded.final OR NOT bars.final
"""
# A partial bar (a late trade for a bar older than the book holds) counts in the row.
MERGE = f"""
INSERT INTO bars ({COLUMNS}) VALUES ({", ".join("?" * 13)})
ON CONFLICT (symbol, interval, t) DO UPDATE SET
    o = CASE WHEN excluded.first_t < coalesce(bars.first_t, bars.t) THEN excluded.o
        ELSE bars.o END,
    c = CASE WHEN excluded.last_t >= coalesce(bars.last_t, bars.t) THEN excluded.c
        ELSE bars.c END,
    first_t = min(excluded.first_t, coalesce(bars.first_t, bars.t)),
    last_t = max(excluded.last_t, coalesce(bars.last_t, bars.t)),
    h = max(bars.h, excluded.h), l = min(bars.l, excluded.l),
    v = min(bars.v, 1.7976931348623157e308 - excluded.v) + excluded.v,
    n = bars.n + excluded.n,
    final = 1, gap = bars.gap OR excluded.gap OR NOT bars.final
"""
# Retention deletes an interval's old bars across every symbol; the primary key leads
# with the symbol, so without this index each hourly prune scans the whole table.
AGE_INDEX = "CREATE INDEX IF NOT EXISTS bars_by_age ON bars (interval, t)"
PRUNE = "DELETE FROM bars WHERE interval = ? AND t < ?"


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.skipped = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bar-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreError("the bar store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call, db)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout = 5000")
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("quick_check failed: the file is corrupt")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at each checkpoint
                db.execute(SCHEMA)
                present = {row[1] for row in db.execute("PRAGMA table_info(bars)")}
                for column, kind in ADDED.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE bars ADD COLUMN {column} {kind}")
                db.execute(AGE_INDEX)
                db.execute("BEGIN IMMEDIATE")  # proves the file is writable now
                db.execute("COMMIT")
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except sqlite3.OperationalError as exc:  # cannot open or write it: misconfigured
            raise StoreError(f"sqlite {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            raise CorruptStore(
                f"sqlite {self.path} is corrupt ({exc}); {repair(self.path)}"
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def claim(self, feed: str) -> None:
        def claim(db: sqlite3.Connection) -> str:
            db.execute(META)
            db.execute(CLAIM, (feed,))
            return str(db.execute(KEPT).fetchone()[0])

        refuse_other_feed(await self._run(claim), feed)

    async def write(self, events: Sequence[BarEvent]) -> None:
        def write(db: sqlite3.Connection) -> None:
            # Made into rows on the store's thread, not the event loop.
            whole = [row_of(event) for event in events if not event.partial]
            partial = [row_of(event) for event in events if event.partial]
            with db:
                db.execute("BEGIN")
                db.executemany(UPSERT, whole)
                if partial:
                    db.executemany(MERGE, partial)

        await self._run(write)

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        ended = ended_before(interval)

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT t, o, h, l, c, v, n, gap OR NOT final, first_t, last_t FROM bars "
                "WHERE symbol = ? AND interval = ? "
                "AND (final = 1 OR t < ?) AND t >= ? AND t < ? ORDER BY t DESC LIMIT ?",
                (symbol, interval, ended, start_ms, end_ms, limit),
            ).fetchall()

        return self._bars(reversed(await self._run(read)), interval)

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                f"SELECT interval, {READ_COLUMNS} FROM bars WHERE symbol = ? AND final = 0",
                (symbol,),
            ).fetchall()

        found: list[tuple[Interval, Bar]] = []
        for interval, *row in await self._run(read):
            for bar in self._bars([row], interval):
                found.append((interval, bar))
        return found

    def _bars(self, rows: Any, interval: str) -> list[Bar]:
        bars: list[Bar] = []
        for row in rows:
            try:
                bars.append(bar_of(row, interval))
            except (ValueError, TypeError, KeyError):
                self.skipped += 1
        return bars

    async def delete_before(self, interval: Interval, before_ms: int) -> int:
        def delete(db: sqlite3.Connection) -> int:
            with db:
                db.execute("BEGIN")
                cursor = db.execute(PRUNE, (interval, before_ms))
            return cursor.rowcount

        return await self._run(delete)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=False)


def repair(path: Path) -> str:
    """What an operator does about a corrupt file (docs/operations.md, "The bar store")."""
    return (
        f"bars are kept in memory only until it is repaired: stop the gateway, then move "
        f"{path} (and its -wal and -shm files) aside to start afresh, or recover its rows "
        f'with: sqlite3 {path} ".recover" | sqlite3 {path}.recovered, and move that in its '
        f"place; then start the gateway again"
    )
