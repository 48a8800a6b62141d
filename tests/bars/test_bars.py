"""Live candles against the real gateway on the scripted simulator: history on
subscribe, live updates at most once a second, finals on the clock, revised finals for
late trades, bar-only symbols carried upstream and released, limits, and GET /bars."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from tests.support.bars import next_second_boundary, now_ms, subscribe_bars, trade_at
from tests.support.helpers import (
    Client,
    GatewayUnderTest,
    Market,
    assert_hub_consistent,
    poll_until,
    run_gateway,
    settings_for,
    without_gap,
)


async def next_bar(client: Client, *, final: bool, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await client.expect("bar", skip=("status", "market", "bar"))
            if message["final"] is final:
                return message


@pytest.mark.slow  # real seconds of 1 s bars on the wall clock
async def test_history_then_live_then_final_on_the_clock(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    assert await subscribe_bars(client, "AAPL", "1s") == []
    start = await next_second_boundary()
    await market.simulator.send_trades(
        [trade_at("AAPL", 10.0, start + 100), trade_at("AAPL", 12.0, start + 200, volume=0.5)]
    )
    live = await next_bar(client, final=False)
    assert live["symbol"] == "AAPL" and live["interval"] == "1s"
    assert live["bar"]["t"] == start and live["bar"]["n"] == 2
    final = await next_bar(client, final=True)  # no later trade needed
    assert without_gap(final["bar"]) == {  # the gap flag: tests/bars/test_bar_gaps.py
        "t": start,
        "o": 10.0,
        "h": 12.0,
        "l": 10.0,
        "c": 12.0,
        "v": 10.5,
        "n": 2,
    }
    assert "revised" not in final
    assert time.time() * 1000 >= start + 1000  # not before its end (plus the grace)

    # A late trade for that closed second: the bar again, final and revised.
    await market.simulator.send_trades([trade_at("AAPL", 9.0, start + 50)])
    revised = await next_bar(client, final=True)
    assert revised["revised"] is True
    assert revised["bar"]["o"] == 9.0 and revised["bar"]["l"] == 9.0 and revised["bar"]["n"] == 3

    # A later subscriber gets the history, revised bar included.
    later = await gateway.connect()
    history = await subscribe_bars(later, "AAPL", "1s")
    assert history[-1] == revised["bar"]
    candles = await gateway.get_json("/bars/AAPL?interval=1s")
    assert candles["s"] == "ok" and candles["t"][-1] == start // 1000
    assert candles["o"][-1] == 9.0 and candles["v"][-1] == 10.5 + 10


# The real second of live-bar pacing, end to end (its slowest run is ~2.5 s of trades and
# waiting): the slow tier.
@pytest.mark.slow
async def test_live_updates_come_at_most_once_a_second(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await subscribe_bars(client, "MSFT", "1m")
    received: list[tuple[float, dict[str, Any]]] = []

    async def read() -> None:
        while True:
            message = await client.expect("bar")
            received.append((time.monotonic(), message))

    reading = asyncio.create_task(read())
    for index in range(30):  # 20 trades a second for 1.5 s
        await market.simulator.send_trades([trade_at("MSFT", 100 + index, now_ms())])
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.7)  # for the update the last trades are due
    reading.cancel()
    # Per bar series: the 2.2 s may cross a minute, and the next minute is a new bar.
    series: dict[int, list[float]] = {}
    for at, message in received:
        if not message["final"]:
            series.setdefault(message["bar"]["t"], []).append(at)
    assert 1 <= len(series) <= 2, sorted(series)
    for times in series.values():
        assert len(times) <= 3, [len(t) for t in series.values()]  # not one per trade
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= 0.9 for gap in gaps), gaps  # at most one a second per bar series
    assert sum(1 for _, m in received if m["bar"]["c"] == 129) >= 1  # ends on the newest


async def test_a_symbol_wanted_only_for_bars_is_carried_and_released(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await subscribe_bars(client, "NVDA", "5m")
    await market.simulator.wait_for(lambda: "NVDA" in market.simulator.subscribed_symbols())
    assert (await gateway.health())["symbols"] == ["NVDA"]
    # Another interval and the price stream of the same symbol hold it no further.
    await subscribe_bars(client, "NVDA", "1m")
    await client.subscribe("NVDA")
    await client.unsubscribe("NVDA")
    await client.send({"action": "unsubscribe_bars", "symbols": ["NVDA"], "interval": "5m"})
    assert (await client.expect("subscription"))["interval"] == "5m"
    assert "NVDA" in market.simulator.subscribed_symbols()
    await client.send({"action": "unsubscribe_bars", "symbols": ["NVDA"], "interval": "1m"})
    await client.expect("subscription")
    await market.simulator.wait_for(lambda: "NVDA" not in market.simulator.subscribed_symbols())
    assert_hub_consistent(gateway.gateway.running.hub)


async def test_leaving_releases_bar_symbols(market: Market, gateway: GatewayUnderTest) -> None:
    client = await gateway.connect()
    await subscribe_bars(client, "AMD", "1m")
    await market.simulator.wait_for(lambda: "AMD" in market.simulator.subscribed_symbols())
    await client.ws.close()
    await market.simulator.wait_for(lambda: "AMD" not in market.simulator.subscribed_symbols())

    async def nobody_left() -> bool:
        return bool((await gateway.health())["clients"] == 0)

    await poll_until(nobody_left)
    assert_hub_consistent(gateway.gateway.running.hub)


async def test_bars_count_against_the_per_client_symbol_cap(market: Market) -> None:
    async with run_gateway(settings_for(market, max_symbols_per_client=2)) as gateway:
        client = await gateway.connect()
        await client.subscribe("AAPL")
        await subscribe_bars(client, "AAPL", "1m")  # the same symbol: no second slot
        await subscribe_bars(client, "MSFT", "1s")
        await client.send({"action": "subscribe_bars", "symbols": ["NVDA"], "interval": "1m"})
        refused = await client.expect("error")
        assert refused["code"] == "too_many_symbols" and refused["symbols"] == ["NVDA"]
        await client.send({"action": "subscribe_bars", "symbols": ["AAPL"], "interval": "2h"})
        invalid = await client.expect("error")
        assert invalid["code"] == "invalid_interval"


async def test_bars_over_http_in_finnhubs_candle_shape(gateway: GatewayUnderTest) -> None:
    empty = await gateway.get_json("/bars/ZZZZ?interval=5m")
    assert empty == {
        "c": [], "h": [], "l": [], "o": [], "t": [], "v": [], "gap": [], "s": "no_data",
    }  # fmt: skip
    async with gateway.session.get(gateway.base_url + "/bars/AAPL?interval=2h") as response:
        assert response.status == 400
    async with gateway.session.get(gateway.base_url + "/bars/%3Cb%3E") as response:
        assert response.status == 400


async def test_a_symbol_finnhub_refuses_is_dropped_from_bar_subscriptions(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await subscribe_bars(client, "FAKESYM", "1m")
    await subscribe_bars(client, "FAKESYM", "5m")
    await market.simulator.wait_for(lambda: "FAKESYM" in market.simulator.subscribed_symbols())
    await market.simulator.send_raw('{"type":"error","msg":"Invalid symbol FAKESYM"}')
    error = await client.expect("error")
    assert error["code"] == "upstream_error" and error["symbols"] == ["FAKESYM"]
    dropped = [await client.expect("subscription") for _ in range(2)]
    assert {(m["status"], m["interval"]) for m in dropped} == {
        ("unsubscribed", "1m"),
        ("unsubscribed", "5m"),
    }
    assert (await gateway.health())["symbols"] == []
    assert_hub_consistent(gateway.gateway.running.hub)  # nothing still held
