"""`GET /stream`: the same messages as Server-Sent Events, with the same limits, and the
symbols released when the client goes away, or stops reading. Against the real server
with aiohttp, and raw sockets for clients that never read."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import aiohttp
import pytest

from bench.attacks import closed_by_peer
from bench.stuck import open_never_reading_stream, send_queues
from stock_gateway import socket_limits, wiring
from tests.support.helpers import (
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)
from tests.support.sse import opened


async def test_a_stream_carries_the_protocol_and_releases_its_symbols(
    market: Market, gateway: GatewayUnderTest
) -> None:
    async with opened(gateway, "symbols=aapl,MSFT") as stream:
        assert (await stream.next())[0] == "connection"
        assert (await stream.expect("subscription"))["symbols"] == ["AAPL", "MSFT"]
        await market.simulator.wait_for(
            lambda: {"AAPL", "MSFT"} <= market.simulator.subscribed_symbols()
        )
        await market.simulator.send_trades([trade("MSFT", 410.0), trade("AAPL", 150.0)])
        assert (await stream.expect("price_update"))["symbol"] == "MSFT"
        assert (await stream.expect("price_update"))["data"]["price"] == 150.0
        assert (await gateway.health())["clients"] == 1

    async def released() -> bool:
        health = await gateway.health()
        return bool(health["clients"] == 0 and health["symbols"] == [])

    await poll_until(released)
    await market.simulator.wait_for(lambda: market.simulator.subscribed_symbols() == set())


async def test_a_late_stream_gets_the_snapshot_first(
    market: Market, gateway: GatewayUnderTest
) -> None:
    async with opened(gateway, "symbols=AAPL") as early:
        await early.expect("subscription")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 151.5)])
        await early.expect("price_update")
        async with opened(gateway, "symbols=AAPL") as late:
            await late.expect("subscription")
            assert (await late.expect("price_update"))["data"]["price"] == 151.5


async def test_batched_and_throttled_streams(market: Market, gateway: GatewayUnderTest) -> None:
    async with opened(gateway, "symbols=AAPL&batch_ms=100&throttle_ms=100") as stream:
        assert await stream.expect("options") == {
            "type": "options",
            "throttle_ms": 100,
            "batch_ms": 100,
        }
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        for price in (1.0, 2.0, 3.0):
            await market.simulator.send_trades([trade("AAPL", price)])
        batch = await stream.expect("price_updates")
        while batch["updates"][-1]["data"]["price"] != 3.0:
            batch = await stream.expect("price_updates")


@pytest.mark.slow  # keep-alive intervals on the real clock
async def test_a_quiet_stream_gets_keep_alive_comments(market: Market) -> None:
    settings = settings_for(market, heartbeat_interval=0.2)
    async with run_gateway(settings) as gateway, opened(gateway, "symbols=AAPL") as stream:
        await stream.expect("subscription")
        with contextlib.suppress(TimeoutError):
            await stream.next(timeout=1.0)  # no event comes: only comments
        assert stream.comments.count(": keep-alive") >= 3


async def test_streams_obey_the_same_limits(market: Market) -> None:
    settings = settings_for(
        market,
        frontend_url=("https://app.example",),
        gateway_token="tok-9",
        max_connections_per_address=1,
        max_symbols_per_client=2,
    )
    async with run_gateway(settings) as gateway:
        url = f"{gateway.base_url}/stream"
        session = gateway.session
        cases: list[tuple[str, dict[str, str], int]] = [
            ("symbols=AAPL", {}, 401),
            ("symbols=AAPL&token=wrong", {}, 401),
            ("symbols=AAPL&token=tok-9", {"Origin": "https://evil.example"}, 403),
            ("symbols=%3Cb%3E&token=tok-9", {}, 400),
            ("symbols=AAPL&token=tok-9&batch_ms=99999", {}, 400),
        ]
        for query, headers, status in cases:
            async with session.get(f"{url}?{query}", headers=headers) as response:
                assert response.status == status, (query, await response.text())
        bearer = {"Authorization": "Bearer tok-9", "Origin": "https://app.example"}
        async with opened(gateway, "symbols=AAPL,MSFT,NVDA", **bearer) as stream:
            refused = await stream.expect("error")
            assert refused["code"] == "too_many_symbols" and refused["symbols"] == ["NVDA"]
            async with session.get(f"{url}?symbols=AAPL&token=tok-9") as second:
                assert second.status == 429 and second.headers["Retry-After"]


# CLIENT_SEND_BUFFER for the stalled stream: small, so its buffers fill in a fraction of
# a second at the rate the gateway takes trades.
SEND_BUFFER = 4096


@pytest.mark.slow  # a stalled stream cut at its real deadlines
@pytest.mark.parametrize("ended_by", ["write_deadline", "eviction"])
async def test_a_stream_that_stops_reading_is_cut_and_releases_everything(
    market: Market, monkeypatch: pytest.MonkeyPatch, ended_by: str
) -> None:
    if ended_by == "eviction":
        # Only the hub's slow-consumer eviction may end it: the server's write deadline
        # (which comes first, as writes pause before the outbox fills) is pushed out.
        limits = socket_limits.connection_limits
        monkeypatch.setattr(
            wiring, "connection_limits", lambda s: replace(limits(s), write_timeout=600)
        )
    settings = settings_for(
        market,
        slow_consumer_timeout=0.1,
        client_send_buffer=SEND_BUFFER,
        client_outbox_size=8,
        max_connections_per_address=1,
    )
    async with run_gateway(settings) as gateway:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        path = "/stream?symbols=AAPL,ZZSTALL"
        stuck = await open_never_reading_stream("127.0.0.1", port, path, local="127.0.0.3")
        pump = asyncio.create_task(_pump(market))
        try:
            await poll_until(lambda: _clients_are(gateway, 1))
            assert set((await gateway.health())["symbols"]) == {"AAPL", "ZZSTALL"}
            # Ended by the server while its client still holds the socket open; till
            # then the kernel queues what CLIENT_SEND_BUFFER allows, not megabytes.
            peak = 0

            async def cut() -> bool:
                nonlocal peak
                peak = max([peak, *send_queues(port, "127.0.0.3")])
                return await _clients_are(gateway, 0)

            await poll_until(cut, timeout=10)
            assert SEND_BUFFER / 2 < peak <= 2 * SEND_BUFFER, peak
            health = await gateway.health()
            assert health["symbols"] == []
            if ended_by == "eviction":
                assert health["slow_consumer_disconnects"] == 1
            else:
                async with gateway.session.get(gateway.base_url + "/metrics") as response:
                    assert 'gateway_refusals_total{reason="write_timeout"} 1.0' in (
                        await response.text()
                    )
            assert closed_by_peer(stuck)
            # Its per-address slot is free again.
            again = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
            async with (
                aiohttp.ClientSession(connector=again) as session,
                session.get(gateway.base_url + path) as response,
            ):
                assert response.status == 200
        finally:
            pump.cancel()
            await asyncio.wait([pump])
            stuck.close()


async def _clients_are(gateway: GatewayUnderTest, count: int) -> bool:
    return bool((await gateway.health())["clients"] == count)


async def _pump(market: Market) -> None:
    """Trades as fast as the gateway takes them: a stalled stream's buffers fill."""
    price = 100.0
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    while True:
        price = round(price + 0.01, 2)
        await market.simulator.send_trades([trade("AAPL", price)])
        await asyncio.sleep(0.001)
