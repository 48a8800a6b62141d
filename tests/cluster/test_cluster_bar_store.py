"""A cluster on one PostgreSQL bar store, with real processes, a real Redis and a real
PostgreSQL: only the leader writes, every node reads the store for `GET /bars`, and a
new leader after a SIGKILL continues where the old one stopped, so the closed bars from
before and after the kill are all in the store, each once, for a symbol nobody follows
any more; a leader with nothing in Redis continues the store's open bar; a process that
cannot use the store fails start-up. Skipped, loudly, without PostgreSQL's server
binaries."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis

from stock_gateway.bars.book import Bar, BarEvent
from stock_gateway.bars.postgres_store import PostgresStore
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.cluster.bars import LeaderBars
from stock_gateway.cluster.link import RedisLink
from stock_gateway.cluster.stored_bars import StoredBars
from stock_gateway.market_data.model import Trade
from tests.support.bars import floored_ms, now_ms
from tests.support.cluster import (
    a_follower,
    bar_with,
    carried,
    connect,
    gateway_process,
    has_leader,
    health,
    subscribe_bars,
)
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    Market,
    RedisServer,
    free_port,
    poll_until,
    run_to_exit,
)

pytestmark = pytest.mark.slow
MINUTE = 60_000


def candle(t: int, price: float) -> dict[str, Any]:
    return {"t": t, "o": price, "h": price, "l": price, "c": price, "v": 1.0, "n": 1}


async def get_json(session: aiohttp.ClientSession, port: int, path: str) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def test_a_new_leader_continues_the_stored_bars_after_a_sigkill(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str, postgres: str
) -> None:
    store = PostgresStore(postgres)
    await store.open()
    minute = floored_ms(MINUTE)
    # Before the cluster: a bar of IBM and one of a symbol it will never carry.
    t0, t1, t2, t3, t4 = (minute - m * MINUTE for m in (90, 40, 30, 20, 10))
    await store.write(
        [BarEvent("IBM", "1m", candle(t0, 9.0), True), BarEvent("OLD", "1m", candle(t0, 5.0), True)]
    )
    env = {"BAR_STORE_URL": postgres}
    upstream = market.url
    try:
        async with (
            gateway_process(tmp_path, upstream, redis_server.url, prefix, env=env) as (one, first),
            gateway_process(tmp_path, upstream, redis_server.url, prefix, env=env) as (two, second),
            aiohttp.ClientSession() as session,
        ):
            await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
            follower = await a_follower(session, [first, second])
            leader = first if follower == second else second
            leader_process = one if follower == second else two
            for port in (leader, follower):  # every node reads the store
                old = await get_json(session, port, "/bars/OLD?interval=1m")
                assert old["t"] == [t0 // 1000] and old["c"] == [5.0]
            follower_health = await health(session, follower)
            assert follower_health["bar_store"] == "ok"
            assert follower_health["bar_store_kind"] == "postgresql"
            assert follower_health["bar_store_backlog"] == 0  # a follower never writes

            client = await connect(session, follower)
            await subscribe_bars(client, "IBM", "1m")
            await carried(market, "IBM")
            for t, price in ((t1, 10.0), (t2, 11.0), (t3, 12.0)):
                await market.simulator.send_trades([{"s": "IBM", "p": price, "v": 1, "t": t}])
                await bar_with(client, t, 1)  # stored in Redis and published

            async def stored(starts: list[int]) -> bool:
                bars = await store.read("IBM", "1m", 0, minute, 100)
                return [bar.t for bar in bars] == starts

            await poll_until(lambda: stored([t0, t1, t2, t3]), timeout=10)  # the leader writes
            # As if the leader were killed before it wrote its last bar: Redis has it, the
            # store does not. The new leader must write it again.
            await store._call("execute", "DELETE FROM bars WHERE symbol = 'IBM' AND t = $1", t3)
            connections = market.simulator.connection_count
            leader_process.process.send_signal(signal.SIGKILL)
            await market.simulator.wait_for(  # the new leader's socket alone: it carries IBM
                lambda: (
                    market.simulator.connection_count > connections
                    and len(market.simulator.connections) == 1
                ),
                timeout=15,
            )
            assert (await health(session, follower))["role"] == "leader"
            await carried(market, "IBM")
            await market.simulator.send_trades([{"s": "IBM", "p": 13.0, "v": 1, "t": t4}])
            await bar_with(client, t4, 1)
            await poll_until(lambda: stored([t0, t1, t2, t3, t4]), timeout=10)

            await client.ws.close()  # nobody follows IBM any more: Redis forgets its bars
            await market.simulator.wait_for(
                lambda: "IBM" not in market.simulator.subscribed_symbols(), timeout=15
            )
            keys = redis.from_url(redis_server.url)
            try:

                async def forgotten() -> bool:
                    return not await keys.exists(f"{prefix}:bars:1m:IBM")

                await poll_until(forgotten, timeout=10)
            finally:
                await keys.aclose()
            span = f"from={t0 // 1000}&to={minute // 1000}"
            candles = await get_json(session, follower, f"/bars/IBM?interval=1m&{span}")
            assert candles["t"] == [t // 1000 for t in (t0, t1, t2, t3, t4)]  # each once
            assert candles["c"] == [9.0, 10.0, 11.0, 12.0, 13.0]
            later = await get_json(session, follower, f"/bars/IBM?interval=1m&from={t2 // 1000}")
            assert later["t"] == [t // 1000 for t in (t2, t3, t4)]
    finally:
        await store.close()


async def test_a_cluster_process_fails_to_start_on_a_store_it_cannot_use(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    """As in one process: every node opens the store, and one it cannot use is named."""
    nothing_there = f"postgresql://gw:hunter2@127.0.0.1:{free_port()}/bars"
    code, output = await run_to_exit(
        sys.executable, str(PROJECT / "gateway.py"), "--port", str(free_port()), cwd=tmp_path,
        FINNHUB_API_KEY=TEST_KEY, FINNHUB_WS_URL=market.url, REST_ENABLED="false",
        REDIS_URL=redis_server.url, REDIS_PREFIX=prefix, BAR_STORE_URL=nothing_there,
    )  # fmt: skip
    assert code != 0
    assert "BAR_STORE_URL" in output and "bar store cannot be used" in output
    assert "hunter2" not in output


async def test_a_new_leader_continues_from_the_store_when_redis_has_nothing(
    redis_server: RedisServer, prefix: str, postgres: str
) -> None:
    """Redis emptied (or the symbol not followed for a while): the store's open bar is
    continued, not replaced by a bar of one trade, and its closed bars are not doubled."""
    store = PostgresStore(postgres)
    await store.open()
    link = RedisLink(redis_server.url, prefix)
    try:
        now = now_ms()
        start = now - now % (5 * MINUTE)  # the current 5-minute bar
        earlier = start - 5 * MINUTE
        open_bar = {"t": start, "o": 20.0, "h": 25.0, "l": 19.0, "c": 21.0, "v": 3.0, "n": 3}
        await store.write(
            [
                BarEvent("CSCO", "5m", candle(earlier, 18.0), final=True),
                BarEvent("CSCO", "5m", open_bar, final=False),
            ]
        )
        recorder = BarRecorder(store, {})
        bars = LeaderBars(
            StoredBars(link.client, link.key), lambda: {"CSCO"}, history=10, grace=0.5,
            recorder=recorder,
        )  # fmt: skip
        await bars.trades_received([Trade("CSCO", 22.0, 1.0, now)])
        await bars.loaded({"CSCO"})  # the store's bars load beside the feed
        bars.record_open()  # as the leadership ends
        assert await recorder.flush()
        stored = await store.open_bars("CSCO")
        assert ("5m", Bar(start, 20.0, 25.0, 19.0, 22.0, 4.0, 4)) in [
            (interval, Bar(b.t, b.o, b.h, b.l, b.c, b.v, b.n)) for interval, b in stored
        ]
        closed = await store.read("CSCO", "5m", 0, start, 10)
        assert [bar.t for bar in closed] == [earlier]
    finally:
        await link.close()
        await store.close()
