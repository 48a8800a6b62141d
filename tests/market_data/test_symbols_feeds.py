"""Every symbol served past the upstream's cap (market_data/feed_plan.py), against the
real gateway and a simulator that carries at most four symbols on its socket: nothing
refused, every symbol priced, the socket never over its cap, a symbol fifty clients
follow live within 2 s and its slot given back after the linger; on `/ws`, `/stream`
and Finnhub's dialect (`/`), which gets trades only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import TEST_KEY, Market, run_gateway, settings_for
from tests.support.sse import opened

CAP = 4  # the simulator's socket, and MAX_UPSTREAM_SYMBOLS
SYMBOLS = [f"SYM{i}" for i in range(10)]


@pytest.fixture
async def busy_market() -> AsyncIterator[Market]:
    """A Finnhub that trades its subscribed symbols often and carries at most CAP."""
    simulator = MarketSimulator(rate=80, token=TEST_KEY, max_symbols=CAP, tick=0.05)
    async with serve(simulator) as url:
        yield Market(simulator, url)


def planned(market: Market, **overrides: Any) -> Any:
    return run_gateway(
        settings_for(
            market,
            max_upstream_symbols=CAP,
            sampled_slots=2,
            sample_turn_seconds=0.5,
            upstream_changes_per_minute=600,
            **overrides,
        )
    )


def assert_socket_within_cap(market: Market) -> None:
    assert market.simulator.max_carried <= CAP
    assert market.simulator.refused_over_cap == 0


@pytest.mark.slow  # sampled turns and polls on the real clock
async def test_ws_every_symbol_past_the_cap_is_served_and_priced(busy_market: Market) -> None:
    async with planned(busy_market) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        confirmed = await client.subscribe(*SYMBOLS)
        assert confirmed["symbols"] == SYMBOLS  # nothing refused for capacity
        priced: dict[str, str] = {}
        feeds_told: dict[str, str] = {}
        async with asyncio.timeout(30):
            while set(priced) != set(SYMBOLS):
                message = await client.receive()
                if message["type"] == "price_update":
                    priced.setdefault(message["symbol"], message["feed"])
                elif message["type"] == "feed":
                    feeds_told[message["symbol"]] = message["feed"]
        assert set(priced.values()) <= {"live", "sampled"}
        assert "sampled" in priced.values()
        assert "sampled" in feeds_told.values()
        feeds = (await gateway.health())["feeds"]
        assert feeds["symbols_by_feed"]["live"] == CAP - 2
        assert sum(feeds["symbols_by_feed"].values()) == len(SYMBOLS)
        assert feeds["upstream_subscribe_messages_per_minute"] <= 600 + 2 * CAP
        assert_socket_within_cap(busy_market)


@pytest.mark.slow  # the linger before a slot is given back
async def test_a_symbol_fifty_clients_follow_goes_live_and_gives_its_slot_back(
    busy_market: Market,
) -> None:
    async with planned(busy_market, symbol_linger_seconds=1.0) as gateway:
        quiet = await gateway.connect()
        await quiet.wait_upstream_connected()
        await quiet.subscribe(*SYMBOLS[:6])
        followers = [await gateway.connect() for _ in range(50)]
        for follower in followers:
            assert (await follower.subscribe("HOT"))["symbols"] == ["HOT"]
        # From the 50th: HOT is live within 2 s (a feed message or a live price says so)
        # and on the upstream socket.
        async with asyncio.timeout(2.0):
            while True:
                message = await followers[0].receive()
                if message.get("symbol") == "HOT" and message.get("feed") == "live":
                    break
            await busy_market.simulator.wait_for(
                lambda: "HOT" in busy_market.simulator.subscribed_symbols(), timeout=2.0
            )
        for follower in followers:
            await follower.ws.close()
        # Nobody follows it: after the linger its slot goes back to the others.
        await busy_market.simulator.wait_for(
            lambda: "HOT" not in busy_market.simulator.subscribed_symbols(), timeout=10
        )
        assert "HOT" not in (await gateway.health())["symbols"]
        assert_socket_within_cap(busy_market)


async def test_stream_carries_the_feed_field_and_messages(busy_market: Market) -> None:
    async with planned(busy_market) as gateway:
        async with opened(gateway, "symbols=" + ",".join(SYMBOLS)) as stream:
            assert (await stream.expect("subscription"))["symbols"] == SYMBOLS
            told = await stream.expect("feed", timeout=10)
            assert told["feed"] in ("sampled", "polled") and told["symbol"] in SYMBOLS
            sampled: set[str] = set()
            async with asyncio.timeout(30):
                while len(sampled) < 3:
                    kind, message = await stream.next()
                    if kind == "price_update" and message["feed"] == "sampled":
                        sampled.add(message["symbol"])
        assert_socket_within_cap(busy_market)


@pytest.mark.slow  # sampled turns on the real clock
async def test_finnhub_dialect_gets_sampled_trades_and_nothing_invented(
    busy_market: Market,
) -> None:
    async with planned(busy_market, rest_enabled=True) as gateway:
        url = gateway.ws_url.removesuffix("/ws") + "/"
        async with gateway.session.ws_connect(url) as ws:
            for symbol in SYMBOLS:
                await ws.send_str(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())
            traded: set[str] = set()
            kinds: set[str] = set()
            async with asyncio.timeout(30):
                while traded != set(SYMBOLS):
                    message = orjson.loads((await ws.receive()).data)
                    kinds.add(message["type"])
                    if message["type"] == "trade":
                        traded |= {trade["s"] for trade in message["data"]}
            feeds = (await gateway.health())["feeds"]["symbols_by_feed"]
        assert kinds <= {"trade", "ping"}  # no feed, no quote: Finnhub's protocol has none
        assert feeds["live"] == CAP - 2 and feeds["sampled"] + feeds["polled"] == 8
        assert_socket_within_cap(busy_market)


async def joined_by_two(gateway: Any) -> str:
    """Two clients (one address: demand sqrt(2) each) on every symbol; the first
    symbol they are told is sampled. A third joining it leaves every feed as it is
    (sqrt(3) is within the hysteresis of sqrt(2))."""
    first, second = await gateway.connect(), await gateway.connect()
    await first.wait_upstream_connected()
    await first.subscribe(*SYMBOLS)
    await second.subscribe(*SYMBOLS)
    async with asyncio.timeout(10):
        while (message := await first.receive())["type"] != "feed":
            pass
    assert message["feed"] == "sampled"
    symbol: str = message["symbol"]
    return symbol


async def test_ws_a_client_joining_a_sampled_symbol_is_told_its_feed(busy_market: Market) -> None:
    async with planned(busy_market) as gateway:
        symbol = await joined_by_two(gateway)
        joining = await gateway.connect()
        assert (await joining.subscribe(symbol))["symbols"] == [symbol]
        async with asyncio.timeout(5):
            while (message := await joining.receive())["type"] != "feed":
                pass
        assert message == {"type": "feed", "symbol": symbol, "feed": "sampled"}


async def test_stream_a_client_joining_a_sampled_symbol_is_told_its_feed(
    busy_market: Market,
) -> None:
    async with planned(busy_market) as gateway:
        symbol = await joined_by_two(gateway)
        async with opened(gateway, f"symbols={symbol}") as stream:
            assert (await stream.expect("subscription"))["symbols"] == [symbol]
            told = await stream.expect("feed", timeout=5)
            assert (told["symbol"], told["feed"]) == (symbol, "sampled")
