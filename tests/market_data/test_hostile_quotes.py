"""An attacker's report about quotes and Finnhub's REST budget, against the real gateway
and the simulator's REST side (which logs every call it is asked):

- the day's change follows a new previous close: refreshed at a session change and when
  a client subscribes after `QUOTE_TTL`, even while the symbol trades;
- addresses asking for junk cannot spend the budget for everyone: one-off lookups get a
  share of it, an unknown symbol is remembered, subscribers come first, a quote fetch is
  charged to the user and to the address, and no window of the simulator's own log
  holds more calls than the plan allows."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.finnhub_dialect import market_known
from tests.support.helpers import (
    TEST_KEY,
    Client,
    GatewayUnderTest,
    Market,
    run_gateway,
    settings_for,
    trade,
)
from tests.support.tokens import SECRET, token

SKIP = ("status", "market")


def with_quotes(market: Market, **overrides: Any) -> Any:
    return settings_for(market, rest_enabled=True, **overrides)


async def change_of(market: Market, client: Client, symbol: str, price: float) -> float:
    """The `change` of the price_update a scripted trade at `price` becomes."""
    await market.simulator.send_trades([trade(symbol, price)])
    update = await client.expect("price_update", skip=SKIP)
    assert update["data"]["price"] == price
    change: float = update["data"]["change"]
    return change


@pytest.mark.slow  # a session change's paced refreshes
async def test_a_session_change_refreshes_a_stale_previous_close(market: Market) -> None:
    simulator = market.simulator
    simulator.session = "closed"
    # QUOTE_TTL 0: every cached quote is already older than it.
    settings = with_quotes(market, quote_ttl=0.0, market_status_interval=0.5)
    async with run_gateway(settings) as gateway:
        await market_known(gateway)
        client = await gateway.connect()
        assert (await client.subscribe("AAPL"))["symbols"] == ["AAPL"]
        yesterday = (await client.expect("quote", skip=SKIP))["data"]["previous_close"]
        await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())
        assert await change_of(market, client, "AAPL", 190.5) == pytest.approx(190.5 - yesterday)

        # A new day: Finnhub's previous close moves on, and the pre-market opens.
        today = round(yesterday - 4.25, 2)
        simulator.book.previous_closes["AAPL"] = today
        calls_before = simulator.rest_calls.of("/quote", "AAPL")
        simulator.session = "pre-market"
        assert (await client.expect("market", skip=("status",)))["session"] == "pre-market"
        # The refreshed quote comes to the subscriber (its card's change moves too) ...
        quote = await client.expect("quote", skip=SKIP)
        assert quote["data"]["previous_close"] == today
        # ... and the next update's change is against the new previous close.
        assert await change_of(market, client, "AAPL", 190.5) == pytest.approx(190.5 - today)
        assert simulator.rest_calls.of("/quote", "AAPL") == calls_before + 1


async def test_a_subscriber_after_quote_ttl_refreshes_a_trading_symbols_close(
    market: Market,
) -> None:
    simulator = market.simulator
    async with run_gateway(with_quotes(market, quote_ttl=0.0)) as gateway:
        await market_known(gateway)  # its first poll would refresh every stale quote
        first = await gateway.connect()
        assert (await first.subscribe("MSFT"))["symbols"] == ["MSFT"]
        yesterday = (await first.expect("quote", skip=SKIP))["data"]["previous_close"]
        await simulator.wait_for(lambda: "MSFT" in simulator.subscribed_symbols())
        # MSFT trades: a live snapshot now stands in for a quote for later subscribers.
        assert await change_of(market, first, "MSFT", 421.0) == pytest.approx(421.0 - yesterday)

        today = round(yesterday + 3.5, 2)
        simulator.book.previous_closes["MSFT"] = today
        second = await gateway.connect()
        assert (await second.subscribe("MSFT"))["symbols"] == ["MSFT"]
        snapshot = await second.expect("price_update", skip=SKIP)
        assert snapshot["data"]["price"] == 421.0
        # The cached quote is older than QUOTE_TTL: the second subscriber's arrival
        # fetches it again, and both subscribers get the new previous close.
        assert (await second.expect("quote", skip=SKIP))["data"]["previous_close"] == today
        assert (await first.expect("quote", skip=SKIP))["data"]["previous_close"] == today
        await simulator.send_trades([trade("MSFT", 422.0)])
        for client in (first, second):
            update = await client.expect("price_update", skip=SKIP)
            assert update["data"]["change"] == pytest.approx(422.0 - today)
        assert simulator.rest_calls.of("/quote", "MSFT") == 2


async def lookups_from(gateway: GatewayUnderTest, address: str, symbols: list[str]) -> list[int]:
    """`GET /quote/{symbol}` for every symbol at once from `address`: the statuses."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def status(symbol: str) -> int:
            async with session.get(f"{gateway.base_url}/quote/{symbol}") as response:
                return response.status

        return list(await asyncio.gather(*map(status, symbols)))


async def test_three_addresses_asking_junk_leave_the_budget_to_a_subscriber(
    market: Market,
) -> None:
    simulator = market.simulator
    simulator.rest_rate = 12  # the plan's limit at the fake Finnhub, small so this is quick
    settings = with_quotes(market, finnhub_rest_rate=12, quote_wait=1.0)
    async with run_gateway(settings) as gateway:
        await market_known(gateway)  # the market-status poll is in the window too
        attackers = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        junk = {address: [f"JUNK{n}X{i:02d}" for i in range(20)] for n, address in
                enumerate(attackers)}  # fmt: skip
        statuses = await asyncio.gather(*(lookups_from(gateway, a, junk[a]) for a in attackers))
        answered = [status for per_address in statuses for status in per_address]
        assert set(answered) <= {404, 503}, answered  # unknown, or no share of the budget left
        victim = await gateway.connect(local="127.0.0.5")
        assert (await victim.subscribe("AAPL"))["symbols"] == ["AAPL"]
        quote = await victim.expect("quote", skip=SKIP)
        assert quote["data"]["price"] > 0

        log = simulator.rest_calls.log
        asked = [s for _, path, s, _ in log if path == "/quote" and s != "AAPL"]
        assert 1 <= len(asked) <= 12 // 2  # one-off lookups: at most half of the plan a minute

        # A junk symbol asked again (from another address, too) is answered from memory.
        again = await lookups_from(gateway, "127.0.0.3", asked[:3])
        assert again == [404, 404, 404]
        calls = simulator.rest_calls
        assert all(calls.of("/quote", symbol) == 1 for symbol in asked)
        assert calls.max_in_any_window(60) <= 12, calls.log
        assert all(status == 200 for *_, status in calls.log), calls.log  # never a 429


async def test_an_unknown_symbol_costs_one_call_however_often_it_is_asked(
    market: Market,
) -> None:
    simulator = market.simulator
    # QUOTE_TTL 0: a quote is never served from the cache; "no quote" is remembered apart.
    async with run_gateway(with_quotes(market, quote_ttl=0.0)) as gateway:
        for _ in range(3):
            assert await lookups_from(gateway, "127.0.0.2", ["ZZJUNK1"]) == [404]
        client = await gateway.connect(local="127.0.0.3")
        assert (await client.subscribe("ZZJUNK1"))["symbols"] == ["ZZJUNK1"]
        await client.send({"action": "ping"})
        assert await client.expect("pong", skip=SKIP) == {"type": "pong"}  # and no quote
        for _ in range(2):  # one after the other: two fetches
            assert await lookups_from(gateway, "127.0.0.4", ["AAPL"]) == [200]
        assert simulator.rest_calls.of("/quote", "ZZJUNK1") == 1
        assert simulator.rest_calls.of("/quote", "AAPL") == 2  # real quotes keep QUOTE_TTL


async def test_quote_fetches_are_charged_to_the_user_and_to_the_address(market: Market) -> None:
    settings = with_quotes(market, jwt_secret=SECRET, jwt_leeway=0, quote_requests_per_address=3)
    async with run_gateway(settings) as gateway:

        async def ask(address: str, user: str, symbol: str) -> int:
            bearer = {"Authorization": f"Bearer {token(user, key=SECRET)}"}
            connector = aiohttp.TCPConnector(local_addr=(address, 0))
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"{gateway.base_url}/quote/{symbol}"
                async with session.get(url, headers=bearer) as response:
                    return response.status

        # Many users behind one address are still one address ...
        assert [await ask("127.0.0.2", f"user{n}", f"ZQ{n}") for n in range(3)] == [404] * 3
        assert await ask("127.0.0.2", "user9", "ZQ9") == 429
        # ... and one user is one user from every address.
        assert await ask("127.0.0.3", "alice", "ZA0") == 404
        assert await ask("127.0.0.4", "alice", "ZA1") == 404
        assert await ask("127.0.0.5", "alice", "ZA2") == 404
        assert await ask("127.0.0.6", "alice", "ZA3") == 429
        assert await ask("127.0.0.6", "bob", "ZB0") == 404  # that address is not spent
        assert market.simulator.rest_calls.of("/quote") == 7


async def drain(client: Client) -> None:
    while True:
        await client.receive(timeout=30)


@pytest.mark.slow  # windows of the plan on the clock, at a 6 s window
async def test_no_window_of_finnhubs_log_holds_more_than_the_plan() -> None:
    """Demand well past the plan for a window and a half, on a plan whose window is 6 s (a
    minute scaled down tenfold, FINNHUB_REST_WINDOW and the simulator alike): the
    simulator's own log, by its own clock, never holds more than the plan's calls in any
    window, never a 429, and the next window gets calls again."""
    window = 6.0
    simulator = MarketSimulator(
        rate=0, token=TEST_KEY, rest_rate=12, rest_window=window, max_symbols=1000
    )
    async with serve(simulator) as url:
        market = Market(simulator, url)
        settings = with_quotes(
            market,
            finnhub_rest_rate=12,
            finnhub_rest_window=window,
            quote_wait=1.0,
            quote_requests_per_address=10_000,
            max_upstream_symbols=1000,
            max_symbols_per_client=1000,
        )
        async with run_gateway(settings) as gateway:
            client = await gateway.connect()
            # Whatever comes back (confirmations, quotes, quote_unavailable) is read and
            # let go: only the calls that reach Finnhub matter here.
            reader = asyncio.create_task(drain(client))
            loop = asyncio.get_running_loop()
            ends = loop.time() + 1.5 * window  # past the budget's window and its slack
            batch = 0
            try:
                while loop.time() < ends:
                    symbols = [f"W{batch:03d}X{i}" for i in range(6)]
                    batch += 1
                    await client.send({"action": "subscribe", "symbols": symbols})
                    await asyncio.sleep(0.25)  # the demand's pace: time itself is the point
                    await client.send({"action": "unsubscribe", "symbols": symbols})
            finally:
                reader.cancel()
                await asyncio.wait([reader])
        calls = simulator.rest_calls
        assert calls.log[-1][0] - calls.log[0][0] > window  # the test crossed a window's edge
        assert len(calls.log) > 12  # ... and the next window got calls again
        assert all(status == 200 for *_, status in calls.log), calls.log
        assert calls.max_in_any_window(window) <= 12, calls.log
