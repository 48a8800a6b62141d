"""The bar store's costs measured directly: the CPU of recording and writing bars, in
this process; its bytes on disk (what the runs left, SQLite or PostgreSQL), the steady
state per symbol and day under the default retention; a timed retention prune.

The CPU is what the store adds to the gateway's process: the bars a real `BarBook`
reports at the scenario's rate (simulated time, so it takes a fraction of the run)
go through `BarRecorder.record` and `flush` into the store, and only those calls are
timed (the process's CPU, every thread: the SQLite store's included; the PostgreSQL
server's is its own process's). The end-to-end runs cannot resolve a cost this small
on a shared machine; this can.

Bytes per row are measured on what the gateway wrote in the run (its own insert order,
its own page fill), then multiplied by the rows a symbol makes in a day when it trades
all day (every second has a trade, so every bar of every interval exists) and by the
rows the default retention keeps (settings.py's BAR_RETENTION_*, through
`bars/startup.py retention`, pruned every `PRUNE_SECONDS`).
"""

from __future__ import annotations

import random
import resource
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from stock_gateway.bars.book import INTERVAL_MS, INTERVALS, BarBook
from stock_gateway.bars.recorder import FLUSH_SECONDS, PRUNE_SECONDS, BarRecorder, open_store
from stock_gateway.bars.sqlite_store import PRUNE, SCHEMA, UPSERT
from stock_gateway.bars.startup import retention
from stock_gateway.market_data.model import Trade
from stock_gateway.settings import Settings

DAY_MS = 86_400_000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def write_cost(url: str, rate: float, symbols: int, seconds: float) -> dict[str, Any]:
    """CPU seconds the recorder and the store `url` spend on `seconds` of bars at `rate`
    trades/s over `symbols` symbols (the book's 10 Hz tick, a flush every FLUSH_SECONDS)."""
    store = open_store(url)
    await store.open()
    recorder = BarRecorder(store, {})
    defaults = Settings()
    book = BarBook(history=defaults.bar_history, grace=defaults.bar_grace)
    rng = random.Random(1)
    names = [f"W{index:02d}" for index in range(symbols)]
    start_ms = int(time.time() * 1000) // 1000 * 1000
    spent = 0.0
    per_tick = round(rate / 10)
    try:
        for tick in range(round(seconds * 10)):
            now_ms = start_ms + tick * 100
            trades = [
                Trade(names[index % symbols], 100 + rng.random(), 1.0, now_ms - rng.randrange(100))
                for index in range(per_tick)
            ]
            book.add_trades(trades, now_ms)
            events = book.due(now_ms)
            before = _cpu()
            recorder.record(events)
            if tick % round(FLUSH_SECONDS * 10) == 0:
                await recorder.flush()
            spent += _cpu() - before
    finally:
        await store.close()
    return {
        "store": store.name,
        "simulated_seconds": seconds,
        "bars_written": recorder.written,
        "cpu_seconds": round(spent, 4),
        "cpu_share_of_a_core": round(spent / seconds, 5),
        "cpu_us_per_bar": round(spent / recorder.written * 1e6, 2) if recorder.written else None,
    }


def sqlite_disk(path: Path) -> dict[str, Any]:
    """A bar store file after its gateway stopped: the WAL as the gateway left it, then
    the file after a checkpoint, and how its pages are used (`dbstat`)."""
    wal = Path(f"{path}-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = dict(db.execute("SELECT interval, COUNT(*) FROM bars GROUP BY interval").fetchall())
        objects = {
            name: {"bytes": size, "used": size - unused}
            for name, size, unused in db.execute(
                "SELECT name, SUM(pgsize), SUM(unused) FROM dbstat GROUP BY name"
            ).fetchall()
        }
    finally:
        db.close()
    file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return _per_row(rows, file_bytes, objects, {"wal_bytes_before_checkpoint": wal_bytes})


async def postgres_disk(url: str) -> dict[str, Any]:
    """The bars table: its heap and indexes as the run left them (with the dead row
    versions of the upserts: an open bar is rewritten every half second), then after
    `VACUUM FULL`. Bytes per row are the packed figure: autovacuum makes the dead
    versions' space reusable, so what they add is bounded by the open bars, a constant,
    not by the rows kept."""
    db = await asyncpg.connect(url)
    try:
        counted = await db.fetch("SELECT interval, COUNT(*) FROM bars GROUP BY interval")
        rows = {record[0]: record[1] for record in counted}
        sizes = "SELECT pg_relation_size('bars'), pg_indexes_size('bars')"
        heap, indexes = await db.fetchrow(sizes)
        await db.execute("VACUUM FULL bars")
        packed_heap, packed_indexes = await db.fetchrow(sizes)
    finally:
        await db.close()
    objects = {
        "bars (heap)": {"bytes": packed_heap, "used": packed_heap, "as_left": heap},
        "indexes": {"bytes": packed_indexes, "used": packed_indexes, "as_left": indexes},
    }
    total = sum(rows.values())
    extra = {"bytes_per_row_as_left": round((heap + indexes) / total, 1) if total else None}
    return _per_row(rows, heap + indexes, objects, extra)


def _per_row(
    rows: dict[str, int], file_bytes: int, objects: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    total = sum(rows.values())
    # sqlite_schema (page 1) and the like are the same few KiB whatever the rows.
    data = sum(item["bytes"] for name, item in objects.items() if "schema" not in name)
    used = sum(item["used"] for name, item in objects.items() if "schema" not in name)
    return {
        "rows": total,
        "rows_by_interval": rows,
        "bytes_on_disk": file_bytes,
        "objects": objects,
        "bytes_per_row": round(data / total, 1) if total else None,
        "used_bytes_per_row": round(used / total, 1) if total else None,
        **extra,
    }


def combined(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' stores as one: rows, bytes and the bytes per row over all of them
    (each run's own insert order and page fill; more rows, less rounding to pages)."""
    if not files:
        return {}
    rows: int = sum(item["rows"] for item in files)

    def per_row(key: str) -> float:
        total: float = sum(item[key] * item["rows"] for item in files)
        return round(total / rows, 1)

    result = {
        "runs": len(files),
        "rows": rows,
        "bytes_per_row": per_row("bytes_per_row"),
        "used_bytes_per_row": per_row("used_bytes_per_row"),
        "each": files,
    }
    if all("bytes_per_row_as_left" in item for item in files):
        result["bytes_per_row_as_left"] = per_row("bytes_per_row_as_left")
    return result


def steady_state(bytes_per_row: float, settings: Settings | None = None) -> dict[str, Any]:
    """One symbol trading all day, every interval: rows (and bytes) written a day, and
    rows (and bytes) kept under the retention, just after an hourly prune and at most
    (just before the next one)."""
    keep = retention(settings or Settings())
    per_day = {interval: max(DAY_MS // INTERVAL_MS[interval], 1) for interval in INTERVALS}
    kept = {interval: per_day[interval] * keep[interval] / 86_400 for interval in INTERVALS}
    extra = {interval: per_day[interval] * PRUNE_SECONDS / 86_400 for interval in INTERVALS}
    written, low = sum(per_day.values()), sum(kept.values())
    high = low + sum(extra.values())
    return {
        "bytes_per_row": bytes_per_row,
        "rows_written_per_day": per_day,
        "retention_seconds": keep,
        "rows_kept": {interval: round(rows) for interval, rows in kept.items()},
        "written_bytes_per_day": round(written * bytes_per_row),
        "kept_bytes_after_prune": round(low * bytes_per_row),
        "kept_bytes_before_prune": round(high * bytes_per_row),
    }


def _series_rows(symbol: str, now_ms: int) -> list[tuple[Any, ...]]:
    """A symbol's rows as the default retention keeps them, just before a prune (two
    hours of 1s bars, 30 days of 1m, ...), with a plausible candle in each."""
    keep = retention(Settings())
    rows: list[tuple[Any, ...]] = []
    for interval in INTERVALS:
        length = INTERVAL_MS[interval]
        span = keep[interval] * 1000 + PRUNE_SECONDS * 1000
        first = (now_ms - int(span)) // length * length
        for t in range(first, now_ms, length):
            rows.append(
                (symbol, interval, t, 100.5, 101.25, 99.75, 100.0, 1234.5, 57, 1, 0, t + 1,
                 t + length - 1)
            )  # fmt: skip
    return rows


def prune_timing(root: Path, symbols: int, index_statement: str) -> dict[str, Any]:
    """One hourly prune (every interval's bars past its retention: an hour's worth of
    each) of a table holding `symbols` symbols' steady state just before a prune, timed
    without and with `index_statement` (the index bars/sqlite_store.py creates), on
    copies of the same file."""
    path = root / "prune.sqlite3"
    now_ms = int(time.time() * 1000) // 1000 * 1000
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(SCHEMA)
    with db:
        db.execute("BEGIN")
        for index in range(symbols):
            db.executemany(UPSERT, _series_rows(f"P{index:03d}", now_ms))  # the store's
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = db.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
    db.close()
    indexed = root / "prune-indexed.sqlite3"
    shutil.copyfile(path, indexed)
    cutoffs = [(interval, now_ms - int(seconds * 1000)) for interval, seconds in
               retention(Settings()).items()]  # fmt: skip
    result: dict[str, Any] = {"symbols": symbols, "rows": total, "bytes": path.stat().st_size}
    for label, file in (("without index", path), ("with index", indexed)):
        db = sqlite3.connect(file, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        if label == "with index":
            started = time.perf_counter()
            db.execute(index_statement)
            result["index_build_seconds"] = round(time.perf_counter() - started, 3)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            result["bytes_with_index"] = file.stat().st_size
        plan = db.execute("EXPLAIN QUERY PLAN " + PRUNE, cutoffs[0]).fetchall()
        deleted, started = 0, time.perf_counter()
        for cutoff in cutoffs:  # one transaction each, as the recorder's prune
            with db:
                db.execute("BEGIN")
                deleted += db.execute(PRUNE, cutoff).rowcount
        result[label] = {
            "seconds": round(time.perf_counter() - started, 4),
            "deleted": deleted,
            "plan": " / ".join(str(step[-1]) for step in plan),
        }
        db.close()
    for leftover in root.glob("prune*"):
        leftover.unlink()
    return result
