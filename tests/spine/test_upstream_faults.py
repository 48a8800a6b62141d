"""Upstream faults the feed must survive: silence, and pings that prove it alive."""

from __future__ import annotations

import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import TEST_KEY, Market, run_gateway, settings_for, trade


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


@pytest.mark.slow
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


async def test_garbage_from_upstream_is_counted_and_skipped(market: Market) -> None:
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        garbage: list[str | bytes] = [
            "not json at all",
            b"\x00\x01 binary",
            '{"type":"news","data":[]}',
            "[1,2,3]",
            '{"type":"trade","data":"nope"}',
            '{"type":"trade","data":[{"s":"AAPL","p":"1","t":1,"v":1},{"s":"AAPL"}]}',
            '{"type":"trade","data":[{"s":"AAPL","p":1e999,"t":1,"v":1}]}',
        ]
        for frame in garbage:
            await market.simulator.send_raw(frame)
        # A valid trade after the garbage is the first thing the client sees.
        await market.simulator.send_trades([trade("AAPL", 6.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 6.0
        health = await gateway.health()
        assert health["upstream_messages_malformed"] >= len(garbage) - 1
        assert health["reconnects"] == 0 and health["upstream"] == "connected"


async def test_a_huge_upstream_frame_is_survived(market: Market) -> None:
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        # Past aiohttp's 4 MiB message limit: the feed drops that socket and reconnects.
        await market.simulator.send_raw('{"type":"trade","data":[' + " " * (5 * 1024 * 1024) + "]}")
        await market.simulator.wait_for(lambda: market.simulator.connection_count >= 2)
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 7.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 7.0
        assert not client.ws.closed


@pytest.mark.slow
async def test_twenty_upstream_restarts_while_trades_flow() -> None:
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    port = 0
    async with serve(simulator) as url:
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
    market = Market(simulator, f"ws://127.0.0.1:{port}/")
    settings = settings_for(market, reconnect_initial_delay=0.01, reconnect_max_delay=0.05)
    async with run_gateway(settings) as gateway:
        clients = [await gateway.connect() for _ in range(5)]
        for index, client in enumerate(clients):
            await client.subscribe("AAPL", f"SYM{index}")
        live = {"AAPL", *(f"SYM{index}" for index in range(5))}
        for restart in range(20):
            # The whole upstream server goes away and comes back on the same port.
            async with serve(simulator, port=port):
                await simulator.wait_for(lambda: simulator.subscribed_symbols() == live, timeout=10)
                price = 100.0 + restart
                await simulator.send_trades([trade("AAPL", price)])
                for client in clients:
                    while (update := await client.expect("price_update"))["data"]["price"] != price:
                        pass  # a snapshot or an older update may come first
                    assert update["symbol"] == "AAPL"
        assert all(not client.ws.closed for client in clients)
        assert (await gateway.health())["clients"] == 5
