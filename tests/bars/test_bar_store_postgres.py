"""The bar store through a real PostgreSQL server the tests start themselves (one per
session, a fresh database per test; tests/conftest.py): bars written by one gateway are
served by the next for a symbol nobody follows, and retention deletes what is past its
time. Skipped, loudly, without
PostgreSQL's server binaries (.ci/run installs Debian's postgresql)."""

from __future__ import annotations

import asyncpg
import pytest

from stock_gateway.bars import postgres_store
from stock_gateway.bars.book import BarEvent
from stock_gateway.bars.postgres_store import PostgresStore
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.bars.store import StoreError
from tests.support.bar_stores import assert_partial_bars_merge
from tests.support.bars import floored_ms, now_ms, trade_at
from tests.support.helpers import Market, poll_until, run_gateway, settings_for

MINUTE, DAY = 60_000, 86_400_000


@pytest.mark.slow  # two gateways in turn on a real PostgreSQL
async def test_bars_outlive_the_gateway_in_postgresql(market: Market, postgres: str) -> None:
    settings = settings_for(market, bar_store_url=postgres)
    sent = now_ms()
    async with run_gateway(settings) as gateway:
        client = await gateway.connect()
        await client.subscribe("IBM")
        await market.simulator.wait_for(lambda: "IBM" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades(
            [trade_at("IBM", 10.0, sent - 2 * DAY), trade_at("IBM", 11.0, sent - 10 * MINUTE)]
        )
        store = PostgresStore(postgres)
        await store.open()
        try:

            async def stored() -> bool:
                return len(await store.read("IBM", "1m", 0, sent, 10)) == 2

            await poll_until(stored)  # within about a second, before any shutdown
        finally:
            await store.close()
        before = await gateway.get_json("/bars/IBM?interval=1m")
    async with run_gateway(settings) as gateway:
        after = await gateway.get_json("/bars/IBM?interval=1m")
        assert after == before and after["c"] == [10.0, 11.0]
        assert (await gateway.health())["bar_store_kind"] == "postgresql"


async def test_retention_in_postgresql(postgres: str) -> None:
    store = PostgresStore(postgres)
    await store.open()
    try:
        recorder = BarRecorder(store, {"5m": 90 * 86_400.0})
        now = floored_ms(5 * MINUTE)
        bar = {"o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0, "n": 1}
        recorder.record(
            BarEvent("RET", "5m", {"t": t, **bar}, final=True) for t in (now - 91 * DAY, now - DAY)
        )
        assert await recorder.flush()
        assert await recorder.prune(now) == 1
        assert [b.t for b in await store.read("RET", "5m", 0, now, 10)] == [now - DAY]
    finally:
        await store.close()


@pytest.mark.slow  # a real PostgreSQL's writes over bar boundaries
async def test_partial_bars_merge_into_postgresql(postgres: str) -> None:
    store = PostgresStore(postgres)
    await store.open()
    try:
        await assert_partial_bars_merge(store)
    finally:
        await store.close()


async def test_retention_in_postgresql_reaches_old_bars_by_an_index(postgres: str) -> None:
    """As in SQLite: the prune selects by interval and age across every symbol, which
    the primary key (symbol first) cannot find without reading all of it."""
    store = PostgresStore(postgres)
    await store.open()
    await store.close()
    db = await asyncpg.connect(postgres)
    try:
        await db.execute("SET enable_seqscan = off")  # an empty table: any plan is cheap
        plan = await db.fetch("EXPLAIN " + postgres_store.PRUNE, "1s", 0)
    finally:
        await db.close()
    scan, condition = (row[0].strip().removeprefix("->").strip() for row in plan[1:])
    assert scan.startswith("Index Scan using bars_by_age on bars")
    assert condition == """Index Cond: (("interval" = '1s'::text) AND (t < '0'::bigint))"""


async def test_a_database_kept_by_one_feed_refuses_the_other(postgres: str) -> None:
    demo = PostgresStore(postgres)  # the test's own database: no feed has claimed it
    await demo.open()
    try:
        await demo.claim("demo")
        await demo.claim("demo")  # the same feed comes back to its store
        with pytest.raises(StoreError, match="demo feed"):
            await demo.claim("finnhub")
    finally:
        await demo.close()
