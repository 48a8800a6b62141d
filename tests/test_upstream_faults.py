"""Upstream faults the feed must survive: silence, and pings that prove it alive."""

from __future__ import annotations

from simulator import MarketSimulator, serve
from tests.conftest import TEST_KEY, Market, run_gateway, settings_for, trade


async def test_a_silent_upstream_is_reconnected(market: Market) -> None:
    # The scripted market sends nothing at all: no trades, no pings.
    async with run_gateway(settings_for(market, upstream_idle_timeout=0.3)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.subscribe("AAPL")
        assert await client.expect("status", skip=()) == {
            "type": "status",
            "upstream": "reconnecting",
        }
        assert await client.expect("status", skip=()) == {"type": "status", "upstream": "connected"}
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 3.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 3.0


async def test_pings_alone_keep_a_quiet_upstream_connected() -> None:
    pinging = MarketSimulator(rate=0, ping_interval=0.1, token=TEST_KEY)
    async with serve(pinging) as url:
        market = Market(pinging, url)
        async with run_gateway(settings_for(market, upstream_idle_timeout=0.5)) as gateway:
            client = await gateway.connect()
            await client.wait_upstream_connected()
            # Twenty pings span four idle timeouts: a feed blind to pings would have dropped.
            await pinging.wait_for(lambda: pinging.pings_sent >= 20)
            health = await gateway.health()
            assert health["reconnects"] == 0 and health["upstream"] == "connected"
            assert pinging.connection_count == 1
