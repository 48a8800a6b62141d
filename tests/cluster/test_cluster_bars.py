"""Bars on a cluster, with real processes and a real Redis: the leader aggregates, a
follower serves history and live bars without aggregating, and a new leader after a
SIGKILL continues the same bars from Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

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
from tests.support.helpers import Market, RedisServer, poll_until, without_gap

pytestmark = pytest.mark.slow


async def test_a_follower_serves_history_and_live_bars(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    upstream = market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        follower = await a_follower(session, [first, second])
        client = await connect(session, follower)
        assert await subscribe_bars(client, "AAPL", "1s") == []
        await carried(market, "AAPL")
        await asyncio.sleep(1 - time.time() % 1 + 0.01)  # the start of a fresh second
        start = floored_ms(1000)
        await market.simulator.send_trades(
            [
                {"s": "AAPL", "p": 10.0, "v": 1, "t": start + 10},
                {"s": "AAPL", "p": 11.0, "v": 2, "t": start + 20},
            ]
        )
        live = await bar_with(client, start, 2)
        assert live["final"] is False
        final = await bar_with(client, start, 2)
        while not final["final"]:
            final = await bar_with(client, start, 2)
        assert without_gap(final["bar"]) == {
            "t": start, "o": 10.0, "h": 11.0, "l": 10.0, "c": 11.0, "v": 3, "n": 2,
        }  # fmt: skip
        later = await connect(session, follower)
        history = await subscribe_bars(later, "AAPL", "1s")
        assert final["bar"] in history
        async with session.get(f"http://127.0.0.1:{follower}/bars/AAPL?interval=1s") as response:
            candles = await response.json()
        assert start // 1000 in candles["t"] and candles["s"] == "ok"


async def test_a_new_leader_continues_the_bars_from_redis(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    upstream = market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (one, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (two, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        follower = await a_follower(session, [first, second])
        leader_process = one if follower == second else two
        client = await connect(session, follower)
        await subscribe_bars(client, "MSFT", "5m")
        await carried(market, "MSFT")
        base = now_ms()
        start = base - base % 300_000  # the current 5-minute bar
        await market.simulator.send_trades(
            [
                {"s": "MSFT", "p": 100.0, "v": 1, "t": base},
                {"s": "MSFT", "p": 105.0, "v": 1, "t": base + 1},
                {"s": "MSFT", "p": 99.0, "v": 1, "t": base + 2},
            ]
        )
        await bar_with(client, start, 3)  # stored (the open bar) and published
        connections = market.simulator.connection_count
        leader_process.process.send_signal(signal.SIGKILL)
        await market.simulator.wait_for(
            lambda: market.simulator.connection_count > connections, timeout=15
        )
        assert (await health(session, follower))["role"] == "leader"
        await carried(market, "MSFT")
        await market.simulator.send_trades([{"s": "MSFT", "p": 101.0, "v": 2, "t": base + 3}])
        continued = await bar_with(client, start, 4)
        # Whether the bar is still open or closed on the clock meanwhile (then revised),
        # it is the same bar: the first leader's three trades and the new leader's one.
        assert without_gap(continued["bar"]) == {
            "t": start, "o": 100.0, "h": 105.0, "l": 99.0, "c": 101.0, "v": 5, "n": 4,
        }  # fmt: skip
        assert continued["bar"]["gap"] is True  # the failover's seconds are not in it
        newcomer = await connect(session, follower)
        history = await subscribe_bars(newcomer, "MSFT", "5m")
        starts = [bar["t"] for bar in history]
        assert starts == sorted(set(starts))  # no bar twice
        assert history[-1] == continued["bar"]
