"""What an upstream sends is checked before anything is built from it, against the
real gateway: a volume at float64's limit reaches no client and no bar (nothing
infinite, no `null`), trades stamped far ahead make no future bars, a redirect from
the REST upstream never carries the key elsewhere, and the simulator's quotes agree
with the trades it streams, for every symbol it streams."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from stock_gateway.bars.book import BAR_MAX_AHEAD_SECONDS, INTERVALS
from stock_gateway.simulator.market import MarketSimulator
from tests.support.bars import BAR_KINDS, subscribe_bars, trade_at
from tests.support.helpers import (
    TEST_KEY,
    Client,
    GatewayUnderTest,
    Market,
    run_gateway,
    settings_for,
)


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_finite_candles(candles: dict[str, Any]) -> None:
    for field in ("o", "h", "l", "c", "v"):
        values = candles[field]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), candles


async def carried(market: Market, symbol: str) -> None:
    await market.simulator.wait_for(lambda: symbol in market.simulator.subscribed_symbols())


@pytest.mark.slow  # waits out a bar's second to see nothing came
async def test_a_volume_at_the_float_limit_reaches_no_client_and_no_bar(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await client.subscribe("AAPL")
    for interval in INTERVALS:
        await subscribe_bars(client, "AAPL", interval)
    await carried(market, "AAPL")
    before = (await gateway.health())["upstream_messages_malformed"]
    now = now_ms()
    # Finite, so plausible to a check for NaN and infinity; two of them sum to infinity.
    await market.simulator.send_trades(
        [
            trade_at("AAPL", 10.0, now, volume=1e308),
            trade_at("AAPL", 10.0, now, volume=1e308),
            trade_at("AAPL", 11.0, now + 1, volume=5),
        ]
    )
    prices: list[dict[str, Any]] = []
    bars: dict[str, dict[str, Any]] = {}
    while not prices or len(bars) < len(INTERVALS):
        message = await client.receive()
        assert message["type"] in (*BAR_KINDS, "price_update"), message
        if message["type"] == "price_update":
            prices.append(message["data"])
        elif message["type"] == "bar":
            bars[message["interval"]] = message["bar"]
    assert [price["volume"] for price in prices] == [5]
    for name, bar in bars.items():
        assert (bar["v"], bar["n"], bar["o"], bar["l"]) == (5, 1, 11.0, 11.0), name
        candles = await gateway.get_json(f"/bars/AAPL?interval={name}")  # 200, not 500
        assert_finite_candles(candles)
        assert candles["v"] == [5]
    assert (await gateway.health())["upstream_messages_malformed"] == before + 1


async def test_trades_stamped_far_ahead_make_no_future_bars(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await subscribe_bars(client, "AAPL", "1s")
    await carried(market, "AAPL")
    now = now_ms()
    # Beyond what the bars accept even if delivery took seconds; within TRADE_MAX_AHEAD,
    # so every one of them is a valid trade, and its price is delivered.
    first_ahead = now + round(2 * BAR_MAX_AHEAD_SECONDS * 1000)
    ahead = [trade_at("AAPL", 10.0, first_ahead + second * 1000) for second in range(3000)]
    await market.simulator.send_trades([*ahead, trade_at("AAPL", 11.0, now)])
    current = now - now % 1000
    while True:  # the trades of one message are counted before any bar is reported
        message = await client.expect("bar", skip=(*BAR_KINDS,))
        if message["bar"]["t"] == current:
            break
        assert message["bar"]["t"] < first_ahead, message
    for each in INTERVALS:
        candles = await gateway.get_json(f"/bars/AAPL?interval={each}")
        assert candles["s"] == "ok" and len(candles["t"]) >= 1
        assert all(start * 1000 < first_ahead for start in candles["t"]), each
        assert_finite_candles(candles)
    candles = await gateway.get_json("/bars/AAPL?interval=1s")
    assert candles["t"] == [current // 1000] and candles["c"] == [11.0]


@pytest.mark.parametrize("status", [302, 307])
async def test_a_rest_redirect_is_not_followed_and_the_key_goes_nowhere_else(
    market: Market, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    elsewhere: list[dict[str, str]] = []  # the headers the other host received

    async def record(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        quote = {"c": 1, "d": 0, "dp": 0, "h": 1, "l": 1, "o": 1, "pc": 1, "t": 1}
        return web.json_response(quote)

    redirected = 0

    async def redirect(request: web.Request) -> web.Response:
        nonlocal redirected
        redirected += 1
        location = f"{other_base}{request.path_qs}"
        return web.Response(status=status, headers={"Location": location})

    runners = []
    for handler in (record, redirect):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    other_base = f"http://127.0.0.1:{runners[0].addresses[0][1]}"
    first_base = f"http://127.0.0.1:{runners[1].addresses[0][1]}/api/v1"
    settings = settings_for(market, rest_enabled=True, finnhub_rest_url=first_base, quote_wait=1)
    try:
        async with run_gateway(settings) as gateway:
            url = f"{gateway.base_url}/quote/AAPL"
            async with gateway.session.get(url) as response:
                assert response.status == 503
                assert TEST_KEY not in await response.text()
            assert redirected >= 1
            assert (await gateway.health())["rest"] == "unreachable"
    finally:
        for runner in runners:
            await runner.cleanup()
    assert elsewhere == []  # not even a request without the key
    assert TEST_KEY not in caplog.text
    assert any("redirect" in r.getMessage() and str(status) in r.getMessage()
               for r in caplog.records)  # fmt: skip


def assert_a_day_of(quote: dict[str, Any], prices: Sequence[float] = ()) -> None:
    data = quote["data"]
    low, high = data["low"], data["high"]
    assert 0 < low <= min(data["open"], data["price"]), data
    assert max(data["open"], data["price"]) <= high, data
    assert all(low <= price <= high for price in prices), (data, prices)
    assert abs(data["timestamp"] - now_ms()) < 60_000, data  # recent, and in milliseconds


async def test_demo_quotes_agree_with_the_stream_for_every_symbol_it_streams() -> None:
    demo = replace(
        settings_for(Market(MarketSimulator(), "ws://127.0.0.1:9")),
        demo=True,
        finnhub_api_key="",
        rest_enabled=True,
        quote_ttl=0,  # every quote asked for is fetched: it must follow the stream
    )
    async with run_gateway(demo) as gateway:
        for symbol in ("AAPL", "GOOGL", "BINANCE:BTCUSDT", "OANDA:EUR_USD"):
            assert_a_day_of(await gateway.get_json(f"/quote/{symbol}"))
        # A symbol the simulator neither knows nor streams has no quote, as on Finnhub.
        async with gateway.session.get(gateway.base_url + "/quote/ZZNOSUCH") as response:
            assert response.status == 404
        client: Client = await gateway.connect()
        await client.send({"action": "subscribe", "symbols": ["GOOGL"]})
        # The subscribe's quote comes unless a newer live price beat it (a quote older
        # than the last price is never sent: docs/protocol.md); any that comes is a day of.
        quotes: list[dict[str, Any]] = []
        streamed: list[float] = []
        while len(streamed) < 5:
            message = await client.receive()
            if message["type"] == "quote":
                quotes.append(message)
            elif message["type"] == "price_update":
                streamed.append(message["data"]["price"])
        for quote in quotes:
            assert_a_day_of(quote)
        assert_a_day_of(await gateway.get_json("/quote/GOOGL"), streamed)
