"""Nothing of the gateway's own protocol reaches a client of Finnhub's dialect at `/`:
Finnhub sends only `trade`, `ping` and `error` (docs/finnhub.md), and its apps break on
any other type. Against the real gateway and the simulator, through every event the
gateway announces on its own: a new previous close, a market-session change and an
upstream reconnection. (An entitlement refresh cannot reach `/`: Finnhub's protocol has
no way to refresh a token, so its session only ends at `exp`: test_finnhub_dialect.py.)

A `/ws` client beside it shows each event happened; the trade sent afterwards comes to
`/` after everything sent to it before, so reading `/` up to that trade sees any leak."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support.finnhub_dialect import finnhub_url, market_known
from tests.support.helpers import Market, run_gateway, settings_for, trade

FINNHUB_TYPES = {"trade", "ping", "error"}
RECEIVE = 5.0


async def _until_trade(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every message up to and including the first trade frame."""
    got: list[dict[str, Any]] = []
    while not got or got[-1].get("type") != "trade":
        got.append(await ws.receive_json(timeout=RECEIVE))
    return got


@pytest.mark.slow  # a reconnection and a session change on the real clock
async def test_a_finnhub_client_gets_nothing_but_finnhubs_messages(market: Market) -> None:
    simulator = market.simulator
    simulator.session = "closed"
    # QUOTE_TTL 0: a session change fetches every subscribed quote again.
    settings = settings_for(market, rest_enabled=True, quote_ttl=0.0, market_status_interval=0.5)
    async with run_gateway(settings) as gateway:
        await market_known(gateway)
        async with gateway.session.ws_connect(finnhub_url(gateway)) as finnhub:
            await finnhub.send_json({"type": "subscribe", "symbol": "AAPL"})
            seen = await gateway.connect()
            assert (await seen.subscribe("AAPL"))["symbols"] == ["AAPL"]
            yesterday = (await seen.expect("quote", skip=("status", "market")))["data"]
            await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())

            # A new day: a new previous close, with the session's change.
            today = round(yesterday["previous_close"] - 4.25, 2)
            simulator.book.previous_closes["AAPL"] = today
            simulator.session = "pre-market"
            assert (await seen.expect("market", skip=("status",)))["session"] == "pre-market"
            quote = await seen.expect("quote", skip=("status", "market"))
            assert quote["data"]["previous_close"] == today

            # The upstream drops and comes back.
            await simulator.drop_connections()
            down = await seen.expect("status", skip=("market", "quote"))
            assert down["upstream"] != "connected"
            await seen.wait_upstream_connected()
            await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())

            await simulator.send_trades([trade("AAPL", 191.0)])
            got = await _until_trade(finnhub)
            assert got[-1]["data"] == [trade("AAPL", 191.0)]
            assert {message["type"] for message in got} <= FINNHUB_TYPES, got
