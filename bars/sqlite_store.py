"""`sqlite:///<path>`: the embedded bar store, one file (and its WAL), for one process.

The standard library's `sqlite3` on one thread of its own (every call goes through a
single-worker executor, so the connection is only ever used by that thread and the
event loop never waits on the disk). WAL mode: readers never block the writer, and a
crash loses at most the transaction being written. Opening checks the file
(`PRAGMA quick_check`): a corrupt or unwritable file is a `StoreError` at start-up.

Schema (docs/bars.md "Stored bars"): `bars(symbol, interval, t, o, h, l, c, v, n,
final)`, primary key (symbol, interval, t), without rowid, so a series' bars are
stored together in start order and a revision replaces its row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bars.book import Bar, BarEvent, Interval
from bars.store import StoreError, bar_of, ended_before, row_of

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
    PRIMARY KEY (symbol, interval, t)
) WITHOUT ROWID
"""
# Retention deletes an interval's old bars across every symbol; the primary key leads
# with the symbol, so without this index each hourly prune scans the whole table.
AGE_INDEX = "CREATE INDEX IF NOT EXISTS bars_by_age ON bars (interval, t)"
PRUNE = "DELETE FROM bars WHERE interval = ? AND t < ?"
UPSERT = "INSERT OR REPLACE INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


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
                db.execute(AGE_INDEX)
                db.execute("BEGIN IMMEDIATE")  # proves the file is writable now
                db.execute("COMMIT")
            except BaseException:
                db.close()
                raise
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def write(self, events: Sequence[BarEvent]) -> None:
        rows = [row_of(event) for event in events]

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.executemany(UPSERT, rows)

        await self._run(write)

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        ended = ended_before(interval)

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT t, o, h, l, c, v, n FROM bars WHERE symbol = ? AND interval = ? "
                "AND (final = 1 OR t < ?) AND t >= ? AND t < ? ORDER BY t DESC LIMIT ?",
                (symbol, interval, ended, start_ms, end_ms, limit),
            ).fetchall()

        return self._bars(reversed(await self._run(read)), interval)

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT interval, t, o, h, l, c, v, n FROM bars WHERE symbol = ? AND final = 0",
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
