"""The simulator's REST quotes tell the truth, as Finnhub's do: a symbol it does not
know gets Finnhub's all-zero answer (and the gateway takes that as "no quote"), and a
symbol's quote is its last traded price, the one its WebSocket trades carried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stock_gateway.simulator.market import MarketSimulator, rest_url, serve
from tests.support.helpers import TEST_KEY, Market, run_gateway, settings_for

FINNHUB_UNKNOWN = {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}


@pytest.fixture
async def trading() -> AsyncIterator[Market]:
    """A simulator that trades every symbol a gateway subscribes, as the demo's does."""
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url:
        yield Market(simulator, url)


async def rest_quote(session: aiohttp.ClientSession, market: Market, symbol: str) -> Any:
    headers = {"X-Finnhub-Token": TEST_KEY}
    async with session.get(
        f"{rest_url(market.url)}/quote", params={"symbol": symbol}, headers=headers
    ) as response:
        assert response.status == 200
        return await response.json()


async def test_an_unknown_symbol_gets_finnhubs_zeros(trading: Market) -> None:
    async with aiohttp.ClientSession() as session:
        assert await rest_quote(session, trading, "ZZNOSUCH") == FINNHUB_UNKNOWN
        assert (await rest_quote(session, trading, "AAPL"))["c"] > 0  # a reference symbol


async def test_the_gateway_has_no_quote_for_a_symbol_the_simulator_does_not_know(
    trading: Market,
) -> None:
    async with run_gateway(settings_for(trading, rest_enabled=True)) as gateway:
        async with gateway.session.get(f"{gateway.base_url}/quote/ZZNOSUCH") as response:
            assert response.status == 404
        assert trading.simulator.rest_calls.of("/quote", "ZZNOSUCH") == 1


async def read_trades(
    ws: aiohttp.ClientWebSocketResponse, symbol: str, seen: list[dict[str, Any]], done: Any
) -> None:
    """Add the symbol's trades to `seen` as they come, until `done(seen[-1])`."""
    while not seen or not done(seen[-1]):
        message = await ws.receive_json(timeout=10)
        seen += [trade for trade in message.get("data", []) if trade.get("s") == symbol]


@pytest.mark.parametrize("symbol", ["AAPL", "ZZTRADED"])
async def test_a_quote_is_the_last_price_the_trades_carried(trading: Market, symbol: str) -> None:
    """A reference symbol, and one the simulator knows only because it has traded it."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{trading.url}?token={TEST_KEY}") as ws,
    ):
        await ws.send_json({"type": "subscribe", "symbol": symbol})
        seen: list[dict[str, Any]] = []
        await read_trades(ws, symbol, seen, lambda _trade: True)  # it has traded
        quote = await rest_quote(session, trading, symbol)
        # The quote's price is the last the stream carried (or is on its way).
        shown = (quote["c"], quote["t"])
        await read_trades(ws, symbol, seen, lambda trade: (trade["p"], trade["t"] // 1000) == shown)
    assert quote["t"] == seen[-1]["t"] // 1000
    assert quote["l"] <= min(t["p"] for t in seen) <= max(t["p"] for t in seen) <= quote["h"]
    # The change is that of the price shown, as Finnhub's `d` and `dp` are.
    assert quote["d"] == round(quote["c"] - quote["pc"], 4)
    assert quote["dp"] == round((quote["c"] - quote["pc"]) / quote["pc"] * 100, 4)
