"""A `quote` never follows a newer price: a subscriber that got a symbol's live price as
its snapshot is not sent an older quote after it (a simple client shows the last
message it got, and would go back to the stale price until the next trade). Against
the trading simulator's WebSocket and REST sides, through the real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import TEST_KEY, Client, Market, run_gateway, settings_for


@pytest.fixture
async def trading() -> AsyncIterator[Market]:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url:
        yield Market(simulator, url)


async def price_after(client: Client, timestamp: int) -> dict[str, Any]:
    """The client's first price update traded after `timestamp` (Unix ms)."""
    while True:
        update = await client.expect("price_update", skip=("status", "market", "quote"))
        if update["data"]["timestamp"] > timestamp:
            return update


async def test_a_subscriber_with_a_live_snapshot_gets_no_older_quote(trading: Market) -> None:
    settings = settings_for(trading, rest_enabled=True, quote_ttl=600.0)
    async with run_gateway(settings) as gateway:
        first = await gateway.connect()
        assert (await first.subscribe("AAPL"))["symbols"] == ["AAPL"]
        await first.expect("price_update", skip=("status", "market", "quote"))
        # The quote, fetched now and cached for QUOTE_TTL; then the symbol trades on.
        quote = (await gateway.get_json("/quote/AAPL"))["data"]
        assert trading.simulator.rest_calls.of("/quote", "AAPL") == 1
        await price_after(first, quote["timestamp"])

        second = await gateway.connect()
        assert (await second.subscribe("AAPL"))["symbols"] == ["AAPL"]
        # A cached quote would go out with the subscription's snapshot, before the pong.
        await second.send({"action": "ping"})
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "pong":
            seen.append(await second.receive())
        snapshot = next(m for m in seen if m["type"] == "price_update")
        assert snapshot["data"]["timestamp"] > quote["timestamp"]
        older = [m for m in seen if m["type"] == "quote"]
        assert older == [], f"a quote older than the snapshot {snapshot}"
        assert trading.simulator.rest_calls.of("/quote", "AAPL") == 1  # it was cached


async def test_a_quote_still_comes_when_the_symbol_has_no_live_price(trading: Market) -> None:
    """The market is shut: stocks do not trade, and the quote is the price to show."""
    trading.simulator.session = "closed"
    async with run_gateway(settings_for(trading, rest_enabled=True)) as gateway:
        client = await gateway.connect()
        assert (await client.subscribe("MSFT"))["symbols"] == ["MSFT"]
        quote = await client.expect("quote", skip=("status", "market"))
        assert quote["data"]["price"] == trading.simulator.book.quote_of("MSFT")["c"]
