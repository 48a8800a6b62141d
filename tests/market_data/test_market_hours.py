"""The real market: a price on every card when the market is closed (quotes), the day's
change on every update, the market's session, and a REST budget that is never
exceeded. Against the simulator's WebSocket and REST sides over real sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from stock_gateway.simulator.market import MarketSimulator, serve
from stock_gateway.simulator.rest import previous_close
from tests.support.helpers import (
    TEST_KEY,
    Client,
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)

QUOTE_FIELDS = {
    "price", "change", "change_percent", "open", "high", "low", "previous_close", "timestamp",
}  # fmt: skip


def with_quotes(market: Market, **overrides: Any) -> Any:
    return settings_for(market, rest_enabled=True, **overrides)


async def subscribed_with_quote(client: Client, symbol: str) -> dict[str, Any]:
    assert (await client.subscribe(symbol))["symbols"] == [symbol]
    return await client.expect("quote", skip=("status", "market"))


async def test_a_closed_market_still_gives_a_price_at_once(market: Market) -> None:
    market.simulator.session = "closed"
    async with run_gateway(with_quotes(market)) as gateway:
        client = await gateway.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        quote = await subscribed_with_quote(client, "AAPL")
        assert loop.time() - started < 1.0
        expected = market.simulator.book.quote_of("AAPL")
        assert quote["symbol"] == "AAPL" and set(quote["data"]) == QUOTE_FIELDS
        assert quote["data"]["price"] == expected["c"]
        assert quote["data"]["previous_close"] == previous_close("AAPL", 190.0)
        assert quote["data"]["timestamp"] % 1000 == 0 and quote["data"]["timestamp"] > 10**12
        assert market.simulator.rest_calls.of("/quote", "AAPL") == 1
        assert market.simulator.rest_calls.tokens_in_urls == 0  # the key went in a header


@pytest.mark.slow
async def test_five_hundred_subscribers_cost_one_rest_call(market: Market) -> None:
    async with run_gateway(with_quotes(market)) as gateway:
        clients = await asyncio.gather(*(gateway.connect() for _ in range(500)))
        quotes = await asyncio.gather(*(subscribed_with_quote(c, "MSFT") for c in clients))
        assert {q["data"]["price"] for q in quotes} == {quotes[0]["data"]["price"]}
        assert market.simulator.rest_calls.of("/quote", "MSFT") == 1


async def test_updates_carry_the_change_against_the_previous_close(market: Market) -> None:
    async with run_gateway(with_quotes(market)) as gateway:
        client = await gateway.connect()
        quote = await subscribed_with_quote(client, "NVDA")
        close = quote["data"]["previous_close"]
        await market.simulator.wait_for(lambda: "NVDA" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("NVDA", 125.5)])
        update = await client.expect("price_update", skip=("status", "market"))
        assert update["data"]["change"] == pytest.approx(125.5 - close)
        assert update["data"]["change_percent"] == pytest.approx(
            (125.5 - close) / close * 100, 1e-3
        )
        assert {"price", "volume", "timestamp"} <= set(update["data"])  # the seed's fields stay


async def test_no_quote_for_an_unknown_symbol_is_not_an_error(market: Market) -> None:
    market.simulator.session = "closed"
    async with run_gateway(with_quotes(market)) as gateway:
        client = await gateway.connect()
        await client.subscribe("ZZNOSUCH")
        await market.simulator.wait_for(
            lambda: market.simulator.rest_calls.of("/quote", "ZZNOSUCH") == 1
        )
        await client.send({"action": "ping"})
        assert await client.expect("pong", skip=("status", "market")) == {"type": "pong"}


async def test_get_quote_over_http(market: Market) -> None:
    async with run_gateway(with_quotes(market, gateway_token="tok-1")) as gateway:
        session, base = gateway.session, gateway.base_url
        async with session.get(f"{base}/quote/aapl?token=tok-1") as response:
            assert response.status == 200
            body = await response.json()
        assert body["type"] == "quote" and body["symbol"] == "AAPL"
        assert set(body["data"]) == QUOTE_FIELDS
        headers = {"Authorization": "Bearer tok-1"}
        async with session.get(f"{base}/quote/ZZNOSUCH", headers=headers) as response:
            assert response.status == 404
        async with session.get(f"{base}/quote/AAPL") as response:
            assert response.status == 401
        async with session.get(f"{base}/quote/%3Cb%3E?token=tok-1") as response:
            assert response.status == 400
        assert market.simulator.rest_calls.of("/quote", "AAPL") == 1  # the second was cached


@pytest.mark.slow  # the market status poll's interval
async def test_the_market_session_on_connect_and_on_change(market: Market) -> None:
    market.simulator.session = "pre-market"
    async with run_gateway(with_quotes(market, market_status_interval=0.5)) as gateway:

        async def known() -> bool:
            return (await gateway.health())["market"] is not None

        await poll_until(known)
        client = await gateway.connect()
        assert await client.receive() == {"type": "status", "upstream": "connected"}
        assert await client.receive() == {
            "type": "market",
            "exchange": "US",
            "is_open": False,
            "session": "pre-market",
            "holiday": None,
        }
        market.simulator.session = "regular"
        changed = await client.expect("market", timeout=5)
        assert changed["session"] == "regular" and changed["is_open"] is True
        market.simulator.session = "closed"
        closed = await client.expect("market", timeout=5)
        assert closed["session"] == "closed" and closed["is_open"] is False
        assert (await gateway.health())["market"]["session"] == "closed"


async def test_stocks_are_silent_and_crypto_trades_when_the_market_is_closed() -> None:
    simulator = MarketSimulator(rate=100, token=TEST_KEY, session="closed")
    async with (
        serve(simulator) as url,
        run_gateway(settings_for(Market(simulator, url))) as gateway,
    ):
        client = await gateway.connect()
        await client.subscribe("AAPL", "BINANCE:BTCUSDT")
        seen: set[str] = set()
        for _ in range(30):
            seen.add((await client.expect("price_update"))["symbol"])
        assert seen == {"BINANCE:BTCUSDT"}


@pytest.mark.slow
async def test_the_budget_holds_under_a_burst_of_distinct_symbols(market: Market) -> None:
    market.simulator.rest_rate = 10  # the plan's limit at the fake Finnhub
    market.simulator.max_symbols = 1000  # a paid plan's socket: the REST budget is the point
    settings = with_quotes(market, finnhub_rest_rate=10, quote_wait=2.0, max_upstream_symbols=500)
    async with run_gateway(settings) as gateway:
        symbols = [f"S{index:03d}" for index in range(200)]
        clients = [await gateway.connect() for _ in range(4)]
        for client, start in zip(clients, range(0, 200, 50), strict=True):
            await client.subscribe(*symbols[start : start + 50])
        # Every symbol is either fetched (the fake knows none of them: zeros, no quote
        # message) or refused with quote_unavailable once QUOTE_WAIT has passed.
        log = market.simulator.rest_calls.log

        async def accounted_for(client: Client, mine: list[str]) -> list[str]:
            refused: list[str] = []
            async with asyncio.timeout(10):
                while not set(mine) <= {s for _, _, s, _ in log} | set(refused):
                    try:
                        error = await client.expect("error", skip=("status", "market"), timeout=0.3)
                    except TimeoutError:
                        continue  # a fetch may still be under way
                    assert error["code"] == "quote_unavailable"
                    refused.extend(error["symbols"])
            return refused

        shares = [symbols[start : start + 50] for start in range(0, 200, 50)]
        refused = await asyncio.gather(*map(accounted_for, clients, shares))
        unavailable = [symbol for share in refused for symbol in share]
        calls = market.simulator.rest_calls
        fetched = [s for _, path, s, _ in calls.log if path == "/quote"]
        assert calls.max_in_any_window(60) <= 10, calls.log  # market status poll included
        assert all(status == 200 for *_, status in calls.log)  # never a 429: we kept to it
        # Slots go to the symbols in the order they were asked for (the HTTP requests
        # themselves may then overtake each other on the way).
        assert sorted(fetched) == symbols[: len(fetched)] and 1 <= len(fetched) <= 10
        assert sorted(unavailable) == symbols[len(fetched) :]


async def test_429_is_honoured_and_401_is_reported_once(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # The fake Finnhub allows less than we were told: the market-status poll and AAPL's
    # quote get through, MSFT's is refused with 429 and nothing more is asked meanwhile.
    market.simulator.rest_rate = 2
    settings = with_quotes(market, finnhub_rest_rate=100, quote_wait=1.0)
    async with run_gateway(settings) as gateway:
        client = await gateway.connect()
        await client.send({"action": "subscribe", "symbols": ["AAPL", "MSFT", "NVDA", "TSLA"]})
        unavailable = [
            (await client.expect("error", skip=("status", "market", "quote", "subscription")))[
                "symbols"
            ][0]
            for _ in range(3)
        ]
        assert set(unavailable) == {"MSFT", "NVDA", "TSLA"}
        log = market.simulator.rest_calls.log
        refused_at = [at for at, *_, status in log if status == 429]
        assert refused_at and log[-1][0] - refused_at[0] < 0.5, log  # only those in flight
        assert len(refused_at) <= 3
        assert (await gateway.health())["rest"] == "rate_limited"

    market.simulator.rest_rate = 1000
    async with run_gateway(with_quotes(market, quote_wait=1.0)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        market.simulator.token = "another-key"  # the REST side now refuses ours
        await client.send({"action": "subscribe", "symbols": ["AMZN", "META", "GOOGL"]})
        for _ in range(3):
            error = await client.expect("error", skip=("status", "market", "subscription"))
            assert error["code"] == "quote_unavailable"
        assert (await gateway.health())["rest"] == "unauthorized"
    refused = [
        r for r in caplog.records if r.name == "gateway.finnhub.rest" and r.levelname == "ERROR"
    ]
    assert len(refused) == 1 and "refused the API key" in refused[0].getMessage()
    assert TEST_KEY not in caplog.text


async def test_health_shows_the_rest_side(gateway: GatewayUnderTest) -> None:
    health = await gateway.health()
    assert health["rest"] == "ok" and health["market"] is None  # REST off in this fixture


async def test_one_address_cannot_spend_the_budget_for_everyone(market: Market) -> None:
    market.simulator.session = "closed"
    settings = with_quotes(market, quote_requests_per_address=5)
    async with run_gateway(settings) as gateway:
        greedy = await gateway.connect(local="127.0.0.2")
        symbols = [f"G{index:02d}" for index in range(12)]
        await greedy.send({"action": "subscribe", "symbols": symbols})
        refused: list[str] = []
        while len(refused) < 7:
            error = await greedy.expect("error", skip=("status", "market", "subscription"))
            assert error["code"] == "quote_unavailable"
            refused.extend(error["symbols"])
        assert refused == symbols[5:]  # its share: the first five
        other = await gateway.connect(local="127.0.0.3")
        quote = await subscribed_with_quote(other, "AAPL")  # everyone else still gets theirs
        assert quote["data"]["price"] > 0
        assert market.simulator.rest_calls.of("/quote") == 6


@pytest.mark.slow  # QUOTE_WAIT on the real clock
async def test_quote_wait_bounds_a_slow_finnhub() -> None:
    async def slow_quote(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"c": 1, "pc": 1, "d": 0, "dp": 0, "h": 1, "l": 1, "o": 1, "t": 1})

    app = web.Application()
    app.router.add_get("/api/v1/quote", slow_quote)
    app.router.add_get("/api/v1/stock/market-status", slow_quote)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    try:
        async with serve(simulator) as url:
            settings = settings_for(
                Market(simulator, url),
                rest_enabled=True,
                finnhub_rest_url=f"http://127.0.0.1:{port}/api/v1",
                quote_wait=0.5,
            )
            async with run_gateway(settings) as gateway:
                client = await gateway.connect()
                loop = asyncio.get_running_loop()
                started = loop.time()
                await client.subscribe("AAPL")
                error = await client.expect("error", skip=("status", "market"))
                assert error["code"] == "quote_unavailable"
                assert loop.time() - started < 1.5  # not the 5 s the fake takes
    finally:
        await runner.cleanup()
