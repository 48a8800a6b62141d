"""Stored bars against the real gateway: late trades (two days, one day and minutes
ago) stored and served; the same closed bars after SIGTERM and after SIGKILL for a
symbol nobody follows; retention; an unwritable store (a misconfiguration) fails
start-up naming the setting (a corrupt one starts degraded: tests/bars/test_bar_store_stalls.py); a
store that fails at run time degrades with /health saying so, and recovers."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.access.holds import SymbolHolds
from stock_gateway.access.refusal import Refusal
from stock_gateway.bars import sqlite_store
from stock_gateway.bars.book import Bar, BarEvent, Interval
from stock_gateway.bars.intervals import NEW_YORK, day_of
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.bars.sqlite_store import SqliteStore
from stock_gateway.bars.store import MemoryStore
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.market_data.model import Trade
from tests.support.bar_stores import (
    DAY,
    MINUTE,
    SlowStore,
    assert_partial_bars_merge,
    env_for,
    gateway_on,
    get_json,
)
from tests.support.bars import floored_ms, now_ms, trade_at
from tests.support.fakes import DEFAULTS, make_book, make_capacity
from tests.support.helpers import (
    PROJECT,
    Market,
    free_port,
    poll_until,
    run_gateway,
    run_to_exit,
    settings_for,
)


def stored_rows(path: Path, symbol: str) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:  # a WAL reader never blocks the gateway's writer
        return int(
            db.execute(
                "SELECT count(*) FROM bars WHERE symbol = ? AND final AND interval IN ('1m', '5m')",
                (symbol,),
            ).fetchone()[0]
        )


async def record_late_trades(market: Market, base: str, db: Path) -> int:
    """Trades two days, one day and ten minutes ago for AAPL (carried while a client
    follows its price), stored as their own closed bars; the moment they were sent."""
    sent = now_ms()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(base.replace("http", "ws") + "/ws") as ws,
    ):
        await ws.send_json({"action": "subscribe", "symbols": ["AAPL"]})
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades(
            [
                trade_at("AAPL", 100.0, sent - 2 * DAY),
                trade_at("AAPL", 101.0, sent - DAY),
                trade_at("AAPL", 102.0, sent - 10 * MINUTE),
            ]
        )

        async def stored() -> bool:  # 1m and 5m bars of each (1s bars: kept an hour)
            return stored_rows(db, "AAPL") >= 2 * 3

        await poll_until(stored)  # written within about a second, not at shutdown
    return sent


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_closed_bars_survive_a_restart_for_a_symbol_nobody_follows(
    tmp_path: Path, market: Market, stop: signal.Signals
) -> None:
    db = tmp_path / "data" / "bars.sqlite3"
    async with gateway_on(tmp_path, market) as (gateway, base):
        sent = await record_late_trades(market, base, db)
        before = await get_json(base, "/bars/AAPL?interval=1m")
        assert before["s"] == "ok" and len(before["t"]) == 3
        gateway.process.send_signal(stop)
        await gateway.process.wait()
    async with gateway_on(tmp_path, market) as (gateway, base):
        after = await get_json(base, "/bars/AAPL?interval=1m")
        assert after == before  # nobody follows AAPL now: from the store alone
        assert after["c"] == [100.0, 101.0, 102.0]
        assert after["t"][-1] == (sent - 10 * MINUTE) // MINUTE * 60
        window = await get_json(
            base, f"/bars/AAPL?interval=5m&from={(sent - DAY - MINUTE) // 1000}&limit=1"
        )
        assert window["c"] == [102.0]  # from=, then the newest `limit`
        assert (await get_json(base, "/health"))["bar_store"] == "ok"
        # Finnhub's candle endpoint reads the same store (`to` inclusive, as Finnhub's).
        finnhub = await get_json(
            base, f"/api/v1/stock/candle?symbol=AAPL&resolution=1&from=0&to={sent // 1000}"
        )
        assert finnhub["c"] == after["c"] and finnhub["t"] == after["t"]
        # Daily candles: New York calendar days (AAPL is a US stock), closed ones stored.
        trades = {sent - 2 * DAY: 100.0, sent - DAY: 101.0, sent - 10 * MINUTE: 102.0}
        days = {day_of("AAPL", t): price for t, price in sorted(trades.items())}
        daily = await get_json(base, "/bars/AAPL?interval=1d")
        closed = [(start, price) for (start, end), price in days.items() if end <= now_ms()]
        assert list(zip(daily["t"], daily["c"], strict=True)) == [
            (start // 1000, price) for start, price in closed
        ]
        assert all(datetime.fromtimestamp(t, NEW_YORK).hour == 0 for t in daily["t"])


def a_directory(data: Path) -> None:  # unwritable as a file, whoever runs the tests
    (data / "bars.sqlite3").mkdir(parents=True)


def under_a_file(data: Path) -> None:  # its directory cannot be made
    data.write_bytes(b"")


@pytest.mark.slow  # a gateway process started to fail
@pytest.mark.parametrize("spoil", [a_directory, under_a_file])
async def test_an_unwritable_store_fails_start_up_naming_the_setting(
    tmp_path: Path, market: Market, spoil: Callable[[Path], None]
) -> None:
    spoil(tmp_path / "data")
    code, output = await run_to_exit(
        sys.executable, str(PROJECT / "gateway.py"), "--port", str(free_port()),
        cwd=tmp_path, **env_for(market),
    )  # fmt: skip
    assert code != 0
    assert "BAR_STORE_URL" in output and "bar store cannot be used" in output


async def test_a_store_failing_at_run_time_degrades_and_nothing_else_stops(
    tmp_path: Path, market: Market
) -> None:
    settings = settings_for(market, bar_store_url=f"sqlite:///{tmp_path}/bars.sqlite3")
    async with run_gateway(settings) as gateway:
        bars = gateway.gateway.running.hub.bars
        assert bars is not None and bars.recorder is not None
        store = bars.recorder.store
        assert isinstance(store, SqliteStore)
        await store.close()  # as good as a disk that refuses every write from now on
        client = await gateway.connect()
        await client.subscribe("MSFT")
        await market.simulator.send_trades([trade_at("MSFT", 50.0, now_ms() - 10 * MINUTE)])
        assert (await client.expect("price_update"))["data"]["price"] == 50.0

        async def degraded() -> bool:
            return bool((await gateway.health())["bar_store"] == "degraded")

        await poll_until(degraded)
        health = await gateway.health()
        assert health["status"] == "ok" and "down" not in health  # nothing else stopped
        candles = await gateway.get_json("/bars/MSFT?interval=1m")
        assert candles["c"] == [50.0]  # served from memory
        async with gateway.session.get(gateway.base_url + "/metrics") as response:
            metrics = await response.text()
        assert "gateway_bar_store_degraded 1.0" in metrics
        lines = metrics.splitlines()
        backlog = next(line for line in lines if line.startswith("gateway_bar_store_backlog "))
        assert float(backlog.split()[1]) >= 1  # the bars it could not write, kept for a retry


async def test_retention_deletes_what_is_past_its_time(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "bars.sqlite3"))
    await store.open()
    try:
        recorder = BarRecorder(store, {"1s": 3600.0, "1m": 30 * 86_400.0})
        now = floored_ms(MINUTE)

        def event(interval: Any, t: int) -> BarEvent:
            bar = {"t": t, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0, "n": 1}
            return BarEvent("AAPL", interval, bar, final=True)

        recorder.record([event("1s", now - 7200_000), event("1s", now - 60_000)])
        recorder.record([event("1m", now - 31 * DAY), event("1m", now - 29 * DAY)])
        assert await recorder.flush()
        assert await recorder.prune(now) == 2
        assert [bar.t for bar in await store.read("AAPL", "1s", 0, now, 10)] == [now - 60_000]
        assert [bar.t for bar in await store.read("AAPL", "1m", 0, now, 10)] == [now - 29 * DAY]
    finally:
        await store.close()


async def test_trades_arriving_while_stored_bars_load_count_after_them() -> None:
    start = floored_ms(MINUTE)
    store = SlowStore(Bar.of(start, 10.0, 1.0, start))  # one trade, stored open
    recorder = BarRecorder(store, {})
    book = make_book()

    async def first_trade() -> None:  # as BarDelivery.trades_received does
        await recorder.load(book, ["AAPL"], 240)
        book.add_trades([Trade("AAPL", 11.0, 1.0, start + 1, None)], start + 2)

    subscribing = asyncio.create_task(recorder.load(book, ["AAPL"], 240))  # subscribe_bars
    await store.reading.wait()
    trading = asyncio.create_task(first_trade())
    asyncio.get_running_loop().call_soon(store.release.set)  # after trading's first step
    await asyncio.gather(subscribing, trading)
    [minute] = book.bars("AAPL", "1m")
    assert (minute.n, minute.o, minute.c) == (2, 10.0, 11.0)  # the stored trade kept


async def test_reads_over_http_cost_their_bytes_per_owner(market: Market) -> None:
    settings = settings_for(market, history_bytes_per_client=2000)
    async with run_gateway(settings) as gateway:
        client = await gateway.connect()
        await client.subscribe("AAPL")
        huge = "/api/v1/stock/candle?symbol=AAPL&resolution=1&from=99999999999999999999"
        assert (await gateway.get_json(huge)) == {"s": "no_data"}  # not a store error
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        sent = now_ms()  # late trades, one a minute for an hour: 60 closed 1m bars
        await market.simulator.send_trades(
            [trade_at("AAPL", 100.0 + k, sent - k * MINUTE) for k in range(1, 61)]
        )
        await client.expect("price_update")

        async def all_counted() -> bool:
            return len((await gateway.get_json("/bars/AAPL?interval=1m"))["t"]) >= 60

        await poll_until(all_counted)  # that answer (~3 KB) put 127.0.0.1 in debt
        candle = "/api/v1/stock/candle?symbol=AAPL&resolution=1&from=0&to=9999999999"
        for path in ("/bars/AAPL?interval=1m", candle):
            async with gateway.session.get(gateway.base_url + path) as response:
                assert response.status == 429, await response.text()
                assert int(response.headers["Retry-After"]) >= 1
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as other,
            other.get(gateway.base_url + candle) as response,  # its own allowance
        ):
            assert response.status == 200 and len((await response.json())["c"]) == 60
        health = await gateway.health()
        assert health["status"] == "ok"


async def test_partial_bars_merge_into_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "bars.sqlite3"))
    await store.open()
    try:
        await assert_partial_bars_merge(store)
    finally:
        await store.close()


@pytest.mark.slow  # real 1 s bars closing
async def test_a_late_trade_older_than_the_history_held_revises_the_stored_bar(
    tmp_path: Path, market: Market
) -> None:
    settings = settings_for(
        market, bar_history=3, bar_store_url=f"sqlite:///{tmp_path / 'bars.sqlite3'}"
    )
    async with run_gateway(settings) as gateway:
        client = await gateway.connect()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        sent = floored_ms(MINUTE)
        minutes = [sent - k * MINUTE for k in range(10, 4, -1)]  # six, the oldest first
        await market.simulator.send_trades([trade_at("AAPL", 100.0, t + 1_000) for t in minutes])
        await client.expect("price_update")
        oldest = f"/bars/AAPL?interval=1m&from={minutes[0] // 1000}&to={minutes[1] // 1000}"

        async def stored(trades: int) -> bool:
            found = await gateway.get_json(oldest)
            return bool(found["s"] == "ok" and found["v"] == [10.0 * trades])

        await poll_until(lambda: stored(1))  # the book holds only the newest three
        await market.simulator.send_trades([trade_at("AAPL", 90.0, minutes[0] + 30_000)])
        await poll_until(lambda: stored(2))
        candle = await gateway.get_json(oldest)
        assert (candle["o"], candle["l"], candle["c"]) == ([100.0], [90.0], [90.0])


async def test_a_failed_read_heals_with_a_read_and_a_failed_write_only_with_a_write(
    tmp_path: Path,
) -> None:
    """A cluster's follower only reads: a read that succeeds again must make it `ok`."""
    broken = SqliteStore(str(tmp_path / "broken.sqlite3"))
    await broken.open()
    await broken.close()
    working = SqliteStore(str(tmp_path / "bars.sqlite3"))
    await working.open()
    try:
        recorder = BarRecorder(broken, {})
        book = make_book(history=10, grace=0.5)
        assert await recorder.series(book, "AAPL", "1m", 0, 2**40, 10) == []
        assert recorder.state == "degraded"
        recorder.store = working
        await recorder.series(book, "AAPL", "1m", 0, 2**40, 10)
        assert recorder.state == "ok"
        recorder.store = broken
        bar = {"t": 0, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0, "n": 1}
        recorder.record([BarEvent("AAPL", "1m", bar, final=True)])
        assert not await recorder.flush() and recorder.state == "degraded"
        await recorder.series(book, "AAPL", "1m", 0, 2**40, 10)  # a read fails too
        recorder.store = working
        await recorder.series(book, "AAPL", "1m", 0, 2**40, 10)
        assert recorder.state == "degraded"  # the bar is still not written
        assert await recorder.flush() and recorder.state == "ok"
    finally:
        await working.close()


class StuckStore(MemoryStore):
    """A store whose writes never finish (a database that stopped answering)."""

    async def write(self, events: Sequence[BarEvent]) -> None:
        await asyncio.Event().wait()


async def test_a_flush_cancelled_mid_write_keeps_its_bars() -> None:
    """A leadership ends while its store writes: what was being written is still there
    for the write-back (cluster/leader.py), not lost with the cancelled write."""
    recorder = BarRecorder(StuckStore(), {})
    bar = {"t": 0, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0, "n": 1}
    recorder.record([BarEvent("AAPL", "1m", bar, final=True)])
    flushing = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0)  # the write has started
    assert recorder.backlog == 0
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert recorder.backlog == 1


async def test_retention_reaches_old_bars_by_an_index_not_by_reading_every_symbol(
    tmp_path: Path,
) -> None:
    """The prune deletes an interval's old bars across every symbol, and the primary key
    leads with the symbol: without an index on (interval, t) every hourly prune reads
    the whole table (BENCHMARKS.md, "The bar store beside memory")."""
    path = tmp_path / "bars.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    try:
        plan = db.execute("EXPLAIN QUERY PLAN " + sqlite_store.PRUNE, ("1s", 0)).fetchall()
    finally:
        db.close()
    assert [step[-1] for step in plan] == [
        "SEARCH bars USING COVERING INDEX bars_by_age (interval=? AND t<?)"
    ]


class SlowReads(MemoryStore):
    """A store whose reads finish only when the test says so."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def read(
        self, symbol: str, interval: Interval, start_ms: int, end_ms: int, limit: int
    ) -> list[Bar]:
        self.reading.set()
        await self.release.wait()
        return [Bar.of(start_ms, 1.0, 1.0, start_ms)]


async def test_an_owner_reads_bars_over_http_one_answer_at_a_time() -> None:
    store = SlowReads()
    capacity = make_capacity()
    bars = BarDelivery(
        make_book(),
        SymbolHolds(capacity, max_symbols_per_client=50),
        budget=HistoryBudget(1_000_000, 1_000_000),
        recorder=BarRecorder(store, {}),
        history=DEFAULTS.bar_history,
    )
    series: tuple[str, Interval, int, int, int] = ("AAPL", "1m", 0, 60_000, 10)
    first = asyncio.create_task(bars.read("10.0.0.1", series, lambda found: b"x" * 500))
    await store.reading.wait()
    second = await bars.read("10.0.0.1", series, lambda found: b"y")
    assert isinstance(second, Refusal) and second.retry_after == 1
    other = asyncio.create_task(bars.read("10.0.0.2", series, lambda found: b"z"))
    store.release.set()
    assert await first == b"x" * 500 and await other == b"z"  # another owner: its own turn
    assert await bars.read("10.0.0.1", series, lambda found: b"y") == b"y"  # then again
