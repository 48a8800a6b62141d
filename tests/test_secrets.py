"""The Finnhub key stays secret on every path: logs, /health, client messages, errors."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.helpers import TEST_KEY, Market, poll_until, run_gateway, settings_for, trade


async def test_key_never_appears_in_logs_health_or_client_messages(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Any] = []
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.send({"action": "subscribe", "symbols": ["AAPL", "<bad>"]})
        seen.append(await client.expect("error"))
        seen.append(await client.expect("subscription"))
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 150.0)])
        seen.append(await client.expect("price_update", skip=("status", "error")))
        await market.simulator.send_raw('{"type":"error","msg":"Invalid symbol AAPL"}')
        seen.append(await client.expect("error"))
        seen.append(await client.expect("subscription"))
        # Finnhub's own error text quoting the key must not carry it on.
        await market.simulator.send_raw(
            '{"type":"error","msg":"Invalid API key: ' + TEST_KEY + '"}'
        )
        seen.append(await client.expect("error"))
        await market.simulator.send_raw('{"type":"' + TEST_KEY + '"}')
        await market.simulator.send_raw("garbage that is not json")
        await market.simulator.drop_connections()
        seen.append(await client.expect("status", skip=()))
        seen.append(await client.expect("status", skip=()))
        seen.append(await gateway.health())
        async with gateway.session.get(gateway.base_url + "/") as response:
            seen.append(await response.text())

    # A refused key: the handshake fails with 401 and the gateway keeps retrying.
    async with run_gateway(settings_for(market, finnhub_api_key=TEST_KEY + "-revoked")) as refused:

        async def retried() -> bool:
            health = await refused.health()
            seen.append(health)
            return bool(health["reconnects"] >= 3)

        await poll_until(retried)
    assert "status=401" in caplog.text
    assert TEST_KEY not in caplog.text
    assert all(TEST_KEY not in repr(item) for item in seen)
    assert TEST_KEY not in repr(settings_for(market))
