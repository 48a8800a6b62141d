"""Property-based: arbitrary frames from one client never hurt another, every frame is
answered, and the hub's maps always agree with what each client holds.

One real gateway (and simulator) runs for the whole module in a thread of its own, so
each of the many examples costs only a couple of WebSocket connections.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import Gateway
from stock_gateway import protocol
from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import (
    TEST_KEY,
    Client,
    Market,
    assert_hub_consistent,
    run_gateway,
    settings_for,
)

pytestmark = pytest.mark.slow

SYMBOLS = ["AAPL", "msft", " brk.b ", "BINANCE:BTCUSDT", "<b>", "", "A" * 41, "IC MARKETS:1"]
# Every code a client can cause by itself (not rate_limited: the budget is lifted here).
ERROR_CODES = set(protocol.ERROR_CODES) - {"rate_limited", "upstream_error"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
requests = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["subscribe", "unsubscribe", "ping", "sell", ""]),
        "symbols": st.lists(st.sampled_from(SYMBOLS) | st.text(max_size=8), max_size=6)
        | json_values,
    }
)
frames = st.one_of(
    st.text(max_size=200).map(lambda text: ("text", text)),
    st.binary(max_size=200).map(lambda data: ("bytes", data)),
    json_values.map(lambda value: ("text", json.dumps(value))),
    requests.map(lambda request: ("text", json.dumps(request))),
)


@dataclass
class ThreadedGateway:
    ws_url: str
    loop: asyncio.AbstractEventLoop
    gateway: Gateway

    def hub_state(self) -> tuple[set[str], set[str]]:
        """Check the hub's maps in its own thread; return (hub symbols, feed wanted)."""

        async def inspect() -> tuple[set[str], set[str]]:
            running = self.gateway.running
            assert_hub_consistent(running.hub)
            return set(running.hub.symbols()), set(running.upstream.interest.symbols)

        return asyncio.run_coroutine_threadsafe(inspect(), self.loop).result(timeout=5)


@pytest.fixture(scope="module")
def threaded_gateway() -> Iterator[ThreadedGateway]:
    ready: list[ThreadedGateway] = []
    started, stop = threading.Event(), threading.Event()

    async def run() -> None:
        simulator = MarketSimulator(rate=0, token=TEST_KEY)
        async with serve(simulator) as url:
            market = Market(simulator, url)
            permissive = settings_for(market, client_message_rate=1e6, client_message_burst=10**6)
            async with run_gateway(permissive) as gateway:
                loop = asyncio.get_running_loop()
                ready.append(ThreadedGateway(gateway.ws_url, loop, gateway.gateway))
                started.set()
                await loop.run_in_executor(None, stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="fuzzed-gateway")
    thread.start()
    assert started.wait(20), "the gateway did not start"
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(20)


def is_ping(kind: str, payload: Any) -> bool:
    if kind != "text":
        return False
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("action") == "ping"


async def answers_until_pong(client: Client) -> list[dict[str, Any]]:
    await client.send({"action": "ping"})
    seen = []
    while (message := await client.receive())["type"] != "pong":
        seen.append(message)
    return seen


async def check_batch(target: ThreadedGateway, batch: list[tuple[str, Any]]) -> None:
    async with aiohttp.ClientSession() as session:
        bystander = Client(await session.ws_connect(target.ws_url))
        assert (await bystander.receive())["type"] == "connection"
        await bystander.subscribe("AAPL")
        fuzzer = Client(await session.ws_connect(target.ws_url))
        await answers_until_pong(fuzzer)  # past the greeting
        for kind, payload in batch:
            if kind == "bytes":
                await fuzzer.ws.send_bytes(payload)
            else:
                await fuzzer.ws.send_str(payload)
            answers = await answers_until_pong(fuzzer)
            if is_ping(kind, payload):
                # Its own pong came first and ended the wait; the marker's pong follows.
                assert answers == []
                assert (await fuzzer.receive())["type"] == "pong"
            else:
                assert answers, f"no answer to {payload!r}"  # every frame is answered
            for answer in answers:
                assert answer["type"] in {"error", "subscription", "status"}, answer
                if answer["type"] == "error":
                    assert answer["code"] in ERROR_CODES, answer
            hub_symbols, wanted = target.hub_state()
            assert hub_symbols == wanted
        assert not fuzzer.ws.closed
        assert await answers_until_pong(bystander) == []  # still served, nothing stray
        await fuzzer.ws.close()
        await bystander.ws.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_arbitrary_frames_from_one_client(
    threaded_gateway: ThreadedGateway, batch: list[tuple[str, Any]]
) -> None:
    asyncio.run(check_batch(threaded_gateway, batch))
