"""The Finnhub key stays secret on every path: logs, /health, client messages, errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from tests.support.helpers import TEST_KEY, Market, poll_until, run_gateway, settings_for, trade


async def test_key_never_appears_in_logs_health_or_client_messages(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Any] = []
    async with run_gateway(settings_for(market, rest_enabled=True)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.send({"action": "subscribe", "symbols": ["AAPL", "<bad>"]})
        seen.append(await client.expect("error"))
        seen.append(await client.expect("subscription"))
        seen.append(await client.expect("quote"))  # REST is on: the key goes there too
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 150.0)])
        seen.append(await client.expect("price_update"))
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
        for path in ("/metrics", "/quote/AAPL", "/docs"):
            async with gateway.session.get(gateway.base_url + path) as response:
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


async def test_upstream_error_text_is_redacted_before_it_is_cut_and_never_relayed(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        for text in (
            f"Invalid API key: {TEST_KEY.upper()}",  # another letter case
            "x" * 195 + TEST_KEY,  # a key straddling the 200-character cut
            "Click https://evil.example to fix your account",  # words for browsers
        ):
            await market.simulator.send_raw(orjson.dumps({"type": "error", "msg": text}).decode())
            error = await client.expect("error")
            assert error["message"] == "the upstream reported an error; prices may pause"
    assert TEST_KEY[:8].lower() not in caplog.text.lower()


async def test_client_tokens_and_credential_headers_never_reach_the_logs(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "gw-token-5e7a91"
    async with run_gateway(settings_for(market, gateway_token=secret)) as gateway:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        targets = [
            f'/ws?x="&token={secret}',  # a raw quote before the token
            f"http://127.0.0.1:{port}/ws?token={secret}",  # the absolute form
            f"/ws?tok%65n={secret}",  # percent-encoded name
            f"/health?token={secret}",  # an HTTP access line, not a WebSocket one
        ]
        for target in targets:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {secret}\r\n"
                f"Cookie: session={secret}\r\nSec-WebSocket-Protocol: {secret}\r\n\r\n".encode()
            )
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 ")
            writer.close()
            await writer.wait_closed()
    assert '/ws?x="&token=***' in caplog.text  # the lines are there, minus the token
    assert secret not in caplog.text


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/bars/GOOG?token={s}&interval=1m", "/bars/GOOG?token=***&interval=1m"),
        ("/health?TOKEN={s}", "/health?TOKEN=***"),
        ("/health?to%6Ben={s}&x=1", "/health?to%6Ben=***&x=1"),
        ("/health?to%256Ben={s}", "/health?to%256Ben=***"),
        ("/health?token=a&token={s}&token={s}", "/health?token=***&token=***&token=***"),
        ("/health?api_key={s}&symbol=AAPL", "/health?api_key=***&symbol=AAPL"),
        ("/health?Authorization=Bearer+{s}", "/health?Authorization=***"),
        ("/health?client_secret={s};password={s}", "/health?client_secret=***;password=***"),
        ("/health?x=1%26token%3D{s}", "/health?x=***"),
        ("/health?symbols=AAPL,MSFT&interval=1m", "/health?symbols=AAPL,MSFT&interval=1m"),
    ],
)
async def test_access_logs_keep_harmless_query_parameters_and_hide_credentials(
    market: Market, caplog: pytest.LogCaptureFixture, target: str, logged: str
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "gw-token-77c0d2"
    async with run_gateway(settings_for(market)) as gateway:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {target.format(s=secret)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 ")
        writer.close()
        await writer.wait_closed()
    assert logged in caplog.text
    assert secret not in caplog.text
