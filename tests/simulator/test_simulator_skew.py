"""The simulator as Finnhub's free plan limits it, trading like a real market with
`skew="zipf"`: every symbol trades whether or not anyone listens, a few often, most
rarely; a socket carries at most `max_symbols`, and gets only its symbols' trades."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve

UNIVERSE = tuple(f"S{rank:02d}" for rank in range(1, 21))  # most traded first


@pytest.mark.slow  # a market trading for long enough to count ranks
async def test_a_zipf_market_trades_every_symbol_at_its_rank_and_carries_at_most_the_cap() -> None:
    # A busy market, so rank 1's 300 trades (the counts compared below) come in ~0.5 s.
    simulator = MarketSimulator(
        rate=2000, tick=0.01, max_symbols=3, seed=7, skew="zipf", universe=UNIVERSE
    )
    skewed = simulator.skewed
    assert skewed is not None
    wanted = ["S01", "S02", "S20", "S05", "S06"]
    async with (
        serve(simulator) as url,
        aiohttp.ClientSession() as session,
        session.ws_connect(url + "?token=t") as ws,
    ):
        for symbol in wanted:
            await ws.send_str(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())
        await simulator.wait_for(lambda: simulator.refused_over_cap == 2)
        await simulator.wait_for(lambda: len(skewed.history["S01"]) >= 300, timeout=20)
        received: set[str] = set()
        while "S01" not in received or "S02" not in received:
            message = orjson.loads((await ws.receive()).data)
            if message["type"] == "trade":
                received |= {trade["s"] for trade in message["data"]}
        async with session.get(url.replace("ws://", "http://") + "history") as response:
            history = (await response.json())["history"]
    assert simulator.max_carried == 3 and received <= {"S01", "S02", "S20"}
    counts = {symbol: len(trades) for symbol, trades in history.items()}
    # The unsubscribed trade too (each opens with one trade at its starting price).
    assert set(counts) == set(UNIVERSE) and all(count >= 1 for count in counts.values())
    assert counts["S01"] > 5 * counts["S20"]  # Zipf: rank 1 trades 20 times rank 20's
    assert counts["S01"] > counts["S05"] > counts["S20"] - 1
    assert all(a[0] <= b[0] for a, b in zip(history["S01"], history["S01"][1:], strict=False))


async def test_without_skew_only_subscribed_symbols_trade() -> None:
    simulator = MarketSimulator(rate=200, tick=0.01, seed=7)
    assert simulator.skewed is None
    async with (
        serve(simulator) as url,
        aiohttp.ClientSession() as session,
        session.ws_connect(url + "?token=t") as ws,
    ):
        await ws.send_str('{"type":"subscribe","symbol":"AAPL"}')
        message = orjson.loads((await ws.receive()).data)
        while message["type"] != "trade":
            message = orjson.loads((await ws.receive()).data)
        async with session.get(url.replace("ws://", "http://") + "history") as response:
            assert response.status == 404
    assert {trade["s"] for trade in message["data"]} == {"AAPL"}
