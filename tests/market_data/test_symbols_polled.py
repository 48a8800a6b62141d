"""Polled symbols (market_data/feed_plan.py, QuoteService.poll): against the real gateway
and a simulator whose socket carries two symbols and whose whole market trades (Zipf),
a symbol past the socket's slots reaches its subscriber as fresh `quote`s marked
`"feed":"polled"`, by REST calls within the plan's rate and never one refused (429)."""

from __future__ import annotations

import asyncio

import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import TEST_KEY, Market, run_gateway, settings_for

SYMBOLS = [f"POL{i}" for i in range(8)]
# Calls a minute: the simulator's and FINNHUB_REST_RATE. A plan this size polls several
# times a second, so the second polled quote comes within a second; the bound asserted
# is the same whatever the plan (a free plan's 30 took ~10 s).
REST_RATE = 600


@pytest.mark.slow  # polls paced at the REST rate
async def test_a_polled_symbols_subscriber_gets_fresh_polled_quotes_within_the_rest_rate() -> None:
    simulator = MarketSimulator(
        rate=40, token=TEST_KEY, max_symbols=2, tick=0.05, rest_rate=REST_RATE,
        skew="zipf", universe=tuple(SYMBOLS),
    )  # fmt: skip
    async with serve(simulator) as url:
        market = Market(simulator, url)
        settings = settings_for(
            market,
            rest_enabled=True,
            finnhub_rest_rate=REST_RATE,
            max_upstream_symbols=2,
            sampled_slots=1,
            upstream_changes_per_minute=2,
            quote_ttl=0.5,
        )
        async with run_gateway(settings) as gateway:
            client = await gateway.connect()
            await client.wait_upstream_connected()
            await client.subscribe(*SYMBOLS)
            feeds: dict[str, str] = {}
            quoted: dict[str, set[int]] = {}
            async with asyncio.timeout(40):
                # Two quotes of different times for a polled symbol: the subscription's
                # snapshot is one; the other can only come from the poller.
                while not any(
                    feeds.get(symbol) == "polled" and len(times) >= 2
                    for symbol, times in quoted.items()
                ):
                    message = await client.receive()
                    if message["type"] == "feed":
                        feeds[message["symbol"]] = message["feed"]
                    elif message["type"] == "quote":
                        assert message["feed"] == "polled"
                        quoted.setdefault(message["symbol"], set()).add(
                            message["data"]["timestamp"]
                        )
    statuses = {status for _, _, _, status in simulator.rest_calls.log}
    assert 429 not in statuses
    assert simulator.rest_calls.max_in_any_window() <= REST_RATE
    assert simulator.max_carried <= 2 and simulator.refused_over_cap == 0
