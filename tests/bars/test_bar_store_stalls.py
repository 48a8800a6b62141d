"""A bar store that stalls must never stall prices, against the real gateway: PostgreSQL
frozen (SIGSTOP) and a SQLite file locked by another process while an attacker makes
the gateway carry new symbols; a bystander on another address keeps its prices
promptly and /health says the store is not ok. A store that keeps failing costs the
event loop a bounded slice per retry, however long the backlog; a corrupt SQLite file
starts the gateway degraded, naming the repair, instead of stopping it."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path

import aiohttp
import pytest

from stock_gateway.access.holds import SymbolHolds
from stock_gateway.bars import recorder as recorder_module
from stock_gateway.bars.book import Bar, BarEvent
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.bars.sqlite_store import SqliteStore
from stock_gateway.delivery import bar_delivery as bars_delivery
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.market_data.model import Trade
from tests.support.bar_stores import SlowStore, gateway_on, get_json
from tests.support.bars import floored_ms, now_ms, trade_at
from tests.support.fakes import DEFAULTS, make_book, make_capacity
from tests.support.helpers import (
    Client,
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
)
from tests.support.postgres_server import PostgresServer, postgres_bin

SILENCE_BOUND = 1.0  # seconds a bystander may go without a price while trades flow
MEDIAN_LATENCY_BOUND = 0.1  # seconds from a trade's stamp to the bystander (median)
HEALTH_BOUND = 5.0  # seconds until /health says the stalled store is not ok
LOOP_STALL_BOUND = 0.05  # seconds a failing retry may hold the event loop


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        message = "NO POSTGRESQL SERVER BINARIES: a frozen PostgreSQL is NOT TESTED"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="bars-pg-stall-") as root:
        server = PostgresServer(Path(root))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@asynccontextmanager
async def frozen(server: PostgresServer) -> AsyncIterator[None]:
    """Every process of the server stopped (SIGSTOP), as a hung host would be; SIGCONT
    on the way out. Its processes: the postmaster and its children."""
    postmaster = int((server.root / "pgdata" / "postmaster.pid").read_text().split()[0])
    stopped: list[int] = []
    try:
        for pid in [postmaster, *children_of(postmaster)]:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found


class Bystander:
    """A client on another address following one steadily traded symbol: when each of
    its prices arrived, and how long after its trade was stamped."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.arrivals: list[float] = []
        self.latencies: list[float] = []

    async def watch(self) -> None:
        while True:
            message = await self.client.receive(timeout=30)
            if message["type"] == "price_update":
                now = time.time()
                self.arrivals.append(now)
                self.latencies.append(now - message["data"]["timestamp"] / 1000)

    def longest_silence_since(self, start: float) -> float:
        times = [start, *(t for t in self.arrivals if t >= start), time.time()]
        return max(later - earlier for earlier, later in itertools.pairwise(times))


@asynccontextmanager
async def steady_market(market: Market, symbols: list[str]) -> AsyncIterator[None]:
    """The upstream trades every symbol in `symbols` (it may grow) every 50 ms."""

    async def trade() -> None:
        price = 100.0
        while True:
            price += 0.01
            await market.simulator.send_trades([trade_at(s, price, now_ms()) for s in symbols])
            await asyncio.sleep(0.05)  # the market's pace, not a synchronisation

    trading = asyncio.create_task(trade())
    try:
        yield
    finally:
        trading.cancel()
        await asyncio.wait([trading])


async def assert_prices_flow_while_new_symbols_load(
    gateway: GatewayUnderTest, market: Market, stall: AbstractAsyncContextManager[None]
) -> None:
    """Inside `stall` (a stopped or locked store), an attacker on 127.0.0.3 makes the
    gateway carry three new symbols, one a second; the bystander on 127.0.0.2 must keep
    receiving AAPL's prices, and /health must say the store is not ok."""
    traded = ["AAPL"]
    bystander = Bystander(await gateway.connect(local="127.0.0.2"))
    await bystander.client.subscribe("AAPL")
    attacker = await gateway.connect(local="127.0.0.3")
    async with steady_market(market, traded):
        await bystander.client.expect("price_update")  # AAPL's stored bars are loaded
        watching = asyncio.create_task(bystander.watch())
        try:
            async with stall:
                start = time.time()
                for n in range(3):
                    symbol = f"NEW{n}"
                    await attacker.send({"action": "subscribe", "symbols": [symbol]})
                    await attacker.expect("subscription", skip=("status", "price_update"))
                    await market.simulator.wait_for(
                        lambda s=symbol: s in market.simulator.subscribed_symbols()
                    )
                    traded.append(symbol)  # its first trade: its stored bars are wanted
                    await asyncio.sleep(1.0)  # the attacker's pace

                async def not_ok() -> bool:
                    return bool((await gateway.health())["bar_store"] != "ok")

                await poll_until(not_ok, timeout=HEALTH_BOUND)
                assert bystander.longest_silence_since(start) < SILENCE_BOUND
                assert len(bystander.latencies) >= 20
                assert statistics.median(bystander.latencies) < MEDIAN_LATENCY_BOUND
        finally:
            watching.cancel()
            await asyncio.wait([watching])


@pytest.mark.slow
async def test_a_frozen_postgresql_never_stalls_prices(
    market: Market, postgres_server: PostgresServer
) -> None:
    settings = settings_for(market, bar_store_url=postgres_server.url)
    async with run_gateway(settings) as gateway:
        await assert_prices_flow_while_new_symbols_load(gateway, market, frozen(postgres_server))
        async with asyncio.timeout(15):  # thawed: the store answers again
            while (await gateway.health())["bar_store"] != "ok":  # noqa: ASYNC110
                await asyncio.sleep(0.05)


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


@asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Another process holding the SQLite file's write lock until the test lets go."""
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert locker.stdin is not None and locker.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert await locker.stdout.readline() == b"locked\n"
        yield
    finally:
        locker.stdin.close()
        async with asyncio.timeout(10):
            await locker.wait()


@pytest.mark.slow
async def test_a_sqlite_file_locked_by_another_process_never_stalls_prices(
    market: Market, tmp_path: Path
) -> None:
    path = tmp_path / "bars.sqlite3"
    settings = settings_for(market, bar_store_url=f"sqlite:///{path}")
    async with run_gateway(settings) as gateway:
        await assert_prices_flow_while_new_symbols_load(gateway, market, locked(path))


@pytest.mark.slow  # a 200,000-bar backlog retried in chunks
async def test_a_failing_retry_of_a_full_backlog_holds_the_loop_briefly(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "bars.sqlite3"))
    await store.open()
    await store.close()  # every write fails from now on, as a full disk's would
    recorder = BarRecorder(store, {})
    start = floored_ms(60_000)
    recorder.record(
        BarEvent(f"S{n % 500}", "1s", {"t": start - 1000 * (n // 500), "o": 1.0, "h": 1.0,
                 "l": 1.0, "c": 1.0, "v": 1.0, "n": 1}, final=True)
        for n in range(recorder_module.MAX_BACKLOG)
    )  # fmt: skip
    assert recorder.backlog == recorder_module.MAX_BACKLOG
    longest = 0.0
    probing = True

    async def probe() -> None:  # how late the loop runs a callback it was asked for
        nonlocal longest
        loop = asyncio.get_running_loop()
        while probing:
            asked = loop.time()
            await asyncio.sleep(0)
            longest = max(longest, loop.time() - asked)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0)
    for _ in range(3):
        assert not await recorder.flush()
    probing = False
    await prober
    assert recorder.state == "degraded"
    assert recorder.backlog == recorder_module.MAX_BACKLOG and recorder.dropped == 0  # none lost
    assert longest < LOOP_STALL_BOUND


@pytest.mark.slow  # a gateway started on a damaged store, then repaired
async def test_a_corrupt_sqlite_file_starts_the_gateway_degraded_naming_the_repair(
    tmp_path: Path, market: Market
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "bars.sqlite3").write_bytes(b"not a database, " * 512)
    async with gateway_on(tmp_path, market) as (process, base):
        health = await get_json(base, "/health")
        assert health["status"] == "ok" and health["bar_store"] == "degraded"
        assert "corrupt" in health["bar_store_error"]
        assert '.recover"' in health["bar_store_error"]
        assert "BAR_STORE_URL" in process.output and ".recover" in process.output
        ws_url = base.replace("http", "ws") + "/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            client = Client(ws)
            assert (await client.receive())["type"] == "connection"
            await client.subscribe("MSFT")
            await market.simulator.wait_for(lambda: "MSFT" in market.simulator.subscribed_symbols())
            await market.simulator.send_trades([trade_at("MSFT", 50.0, now_ms())])
            assert (await client.expect("price_update"))["data"]["price"] == 50.0  # prices flow
        candles = await get_json(base, "/bars/MSFT?interval=1m")
        assert candles["c"] == [50.0]  # bars in memory
    assert (data / "bars.sqlite3").read_bytes() == b"not a database, " * 512  # left for repair


async def test_trades_held_while_a_symbol_loads_count_after_its_stored_bars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The feed's path never waits for the store: the trade is held, not counted, while
    the store's open bar is read; once it comes, the trade counts in that bar."""
    now = now_ms()
    start = now - now % 60_000
    # The book's clock half a minute in: the trade's 1s bar has closed (a revision to
    # record), its 1m bar has not, whenever in the minute the test runs.
    monkeypatch.setattr(bars_delivery, "_now_ms", lambda: start + 30_000)
    store = SlowStore(Bar.of(start, 10.0, 1.0, start))  # one trade, stored open
    recorder = BarRecorder(store, {})
    book = make_book()
    capacity = make_capacity()
    bars = BarDelivery(
        book,
        SymbolHolds(capacity, max_symbols_per_client=50),
        recorder=recorder,
        history=DEFAULTS.bar_history,
    )
    async with asyncio.timeout(1):  # the store answers nothing yet
        await bars.trades_received([Trade("AAPL", 11.0, 1.0, start + 1, None)])
    await store.reading.wait()
    assert recorder.loads.held == 1
    assert book.bars("AAPL", "1m") == []
    store.release.set()
    await recorder.loads.wait(["AAPL"])
    [minute] = book.bars("AAPL", "1m")
    assert (minute.n, minute.o, minute.c) == (2, 10.0, 11.0)  # the stored trade kept
    assert recorder.loads.held == 0 and recorder.backlog >= 1  # recorded for the store
