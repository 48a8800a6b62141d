"""One plan per key on a real two-node cluster (cluster/feeds.py): against real Redis
and a simulator whose socket carries two symbols, a client on the follower is told the
same feeds as a client on the leader, and both get the leader's polled quotes; the
Finnhub dialect (`/`) on the follower gets trades only; when the leader goes, the new
leader's polls reach the survivor's client."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.cluster import a_follower, connect, gateway_process, has_leader, health
from tests.support.helpers import TEST_KEY, Client, RedisServer, poll_until

pytestmark = pytest.mark.slow

SYMBOLS = [f"CLF{i}" for i in range(8)]
REST_RATE = 12  # calls a window: the simulator's and FINNHUB_REST_RATE
WINDOW = 6.0  # the plan's window scaled down tenfold: polls ten times as often
# Two socket slots, one of them rotating. A cluster polls at its subscriber reserve: two
# calls a window here, a poll every 3 s, so the rotation (a turn costing a symbol's trade
# gap, 20 s before it is known; 5 s turns) is worth one sampled symbol at first.
PLANNED = {
    "MAX_UPSTREAM_SYMBOLS": "2",
    "SAMPLED_SLOTS": "1",
    "SAMPLE_TURN_SECONDS": "5",
    "UPSTREAM_CHANGES_PER_MINUTE": "60",
    "FINNHUB_REST_RATE": str(REST_RATE),
    "FINNHUB_REST_WINDOW": str(WINDOW),
    "QUOTE_TTL": "0.5",
}


class Heard:
    """What one /ws client is told: each symbol's last feed, each symbol's quote times."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.feeds: dict[str, str] = {}
        self.quoted: dict[str, set[int]] = {}
        self.news = asyncio.Event()

    async def listen(self) -> None:
        while True:
            message = await self.client.receive(timeout=60)
            if message["type"] == "feed":
                self.feeds[message["symbol"]] = message["feed"]
            elif message["type"] == "quote":
                assert message["feed"] == "polled"
                self.quoted.setdefault(message["symbol"], set()).add(message["data"]["timestamp"])
            self.news.set()

    def polled_quotes(self) -> dict[str, set[int]]:
        """Quote times of symbols told polled, two polls at least."""
        return {
            symbol: times
            for symbol, times in self.quoted.items()
            if self.feeds.get(symbol) == "polled" and len(times) >= 2
        }


async def until(condition: Any, heard: list[Heard], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            for each in heard:
                each.news.clear()
            waits = [asyncio.create_task(each.news.wait()) for each in heard]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()


async def finnhub_dialect(ws: aiohttp.ClientWebSocketResponse, kinds: set[str]) -> None:
    while True:
        message = await ws.receive()
        if message.type is not aiohttp.WSMsgType.TEXT:
            return
        kinds.add(orjson.loads(message.data)["type"])


async def test_follower_clients_see_the_leaders_feeds_and_polled_quotes(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    simulator = MarketSimulator(
        rate=40, token=TEST_KEY, max_symbols=2, tick=0.05, rest_rate=REST_RATE,
        rest_window=WINDOW, skew="zipf", universe=tuple(SYMBOLS),
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(serve(simulator))
        started = [
            await stack.enter_async_context(gateway_process(
                tmp_path, upstream, redis_server.url, prefix, rest=True, env=PLANNED
            ))
            for _ in range(2)
        ]  # fmt: skip
        ports = [port for _, port in started]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        await poll_until(lambda: has_leader(session, ports), timeout=15)
        follower = await a_follower(session, ports)
        leader = next(port for port in ports if port != follower)
        on_leader = Heard(await connect(session, leader))
        on_follower = Heard(await connect(session, follower))
        dialect = await session.ws_connect(f"ws://127.0.0.1:{follower}/")
        for heard in (on_leader, on_follower):
            assert (await heard.client.subscribe(*SYMBOLS))["symbols"] == SYMBOLS
        for symbol in SYMBOLS:
            await dialect.send_str(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())
        kinds: set[str] = set()
        listening = [
            asyncio.create_task(on_leader.listen()),
            asyncio.create_task(on_follower.listen()),
            asyncio.create_task(finnhub_dialect(dialect, kinds)),
        ]
        try:
            # The same plan told on both nodes, and the leader's polls heard on both.
            def one_plan_told_everywhere() -> bool:
                feeds = on_leader.feeds
                return (
                    feeds == on_follower.feeds
                    and {"sampled", "polled"} <= set(feeds.values())
                    and bool(on_leader.polled_quotes())
                    and bool(on_follower.polled_quotes())
                )

            await until(one_plan_told_everywhere, [on_leader, on_follower], timeout=60)
            by_feed = (await health(session, leader))["feeds"]["symbols_by_feed"]
            told = list(on_follower.feeds.values())
            assert (told.count("sampled"), told.count("polled")) == (
                by_feed["sampled"],
                by_feed["polled"],
            )
            # The leader goes (cleanly): the survivor leads, and its own plan's polls
            # reach its client.
            before = {symbol: set(times) for symbol, times in on_follower.quoted.items()}
            await started[ports.index(leader)][0].terminate()
            await poll_until(lambda: has_leader(session, [follower]), timeout=15)

            def new_polls_heard() -> bool:
                return any(
                    times - before.get(symbol, set())
                    for symbol, times in on_follower.polled_quotes().items()
                )

            await until(new_polls_heard, [on_follower], timeout=60)
            assert "trade" in kinds and kinds <= {"trade", "ping"}  # no feed, no quote
        finally:
            for task in listening:
                task.cancel()
            await asyncio.wait(listening)
            for task in listening:  # the leader's client saw its node go: no matter
                if not task.cancelled():
                    task.exception()
    assert 429 not in {status for _, _, _, status in simulator.rest_calls.log}
    assert simulator.max_carried <= 2 and simulator.refused_over_cap == 0
