"""A client that stops reading is ended on every surface at an ordinary rate, within a
bound of SLOW_CONSUMER_TIMEOUT, long before its outbox or the kernel's buffers fill
(server/progress.py), and its per-address slot is freed; a client that reads keeps its
stream. Real gateway, raw sockets with a 4 KiB receive buffer that never read."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable

import aiohttp
import pytest

from bench.attacks import ws_handshake
from bench.stuck import masked_text_frame, open_never_reading_stream
from tests.support.helpers import (
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)

STALLED_FROM = "127.0.0.3"
# SLOW_CONSUMER_TIMEOUT in milliseconds' scale (the watch samples it, server/progress.py:
# the same rule at any timeout), and the trade rate scaled with it so the buffers fill
# in as many timeouts as at 20 a second and a 1 s timeout.
SLOW_CONSUMER_TIMEOUT = 0.25
TRADES_PER_SECOND = 80  # still an ordinary rate: several KB/s to each client
REAPED_WITHIN = 10.0  # seconds: a bound only; the 4 KiB buffer fills, then ~1.75 timeouts


async def stalled_stream(gateway: GatewayUnderTest, port: int) -> socket.socket:
    return await open_never_reading_stream(
        "127.0.0.1", port, "/stream?symbols=AAPL", local=STALLED_FROM
    )


async def stalled_ws(gateway: GatewayUnderTest, port: int) -> socket.socket:
    sock = await ws_handshake("127.0.0.1", port, STALLED_FROM, receive_buffer=4096)
    subscribe = masked_text_frame('{"action":"subscribe","symbols":["AAPL"]}')
    await asyncio.get_running_loop().sock_sendall(sock, subscribe)
    return sock


async def stalled_finnhub(gateway: GatewayUnderTest, port: int) -> socket.socket:
    sock = await ws_handshake("127.0.0.1", port, STALLED_FROM, receive_buffer=4096, path="/")
    subscribe = masked_text_frame('{"type":"subscribe","symbol":"AAPL"}')
    await asyncio.get_running_loop().sock_sendall(sock, subscribe)
    return sock


Opener = Callable[[GatewayUnderTest, int], Awaitable[socket.socket]]


async def pump(market: Market) -> None:
    """AAPL trades at an ordinary rate, until cancelled."""
    price = 100.0
    while True:
        price += 0.01
        await market.simulator.send_trades([trade("AAPL", round(price, 2))])
        await asyncio.sleep(1 / TRADES_PER_SECOND)  # the rate itself, not a synchronisation


async def reader_events(session: aiohttp.ClientSession, url: str) -> AsyncGenerator[bytes, None]:
    async with session.get(url) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: "):
                yield line


@pytest.mark.slow  # three stall timeouts of reading on every surface
@pytest.mark.parametrize("open_stalled", [stalled_stream, stalled_ws, stalled_finnhub])
async def test_a_client_that_stops_reading_is_ended_at_an_ordinary_rate(
    market: Market, open_stalled: Opener
) -> None:
    settings = settings_for(
        market, slow_consumer_timeout=SLOW_CONSUMER_TIMEOUT, max_connections_per_address=1
    )
    async with run_gateway(settings) as gateway:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        trades = asyncio.create_task(pump(market))
        stalled = await open_stalled(gateway, port)
        reading = reader_events(gateway.session, f"{gateway.base_url}/stream?symbols=AAPL")
        try:
            async with asyncio.timeout(5):
                await anext(reading)  # the reading client streams

            async def reaped() -> bool:  # the stalled one is gone: only the reader is left
                return bool((await gateway.health())["clients"] == 1)

            await poll_until(reaped, timeout=REAPED_WITHIN)
            # Its address's one slot is free again.
            connector = aiohttp.TCPConnector(local_addr=(STALLED_FROM, 0))
            async with aiohttp.ClientSession(connector=connector) as same_address:
                url = f"{gateway.base_url}/stream?symbols=AAPL"
                async with same_address.get(url) as response:
                    assert response.status == 200
            # The reader was never taken for stalled: its stream goes on.
            async with asyncio.timeout(5):
                for _ in range(round(3 * SLOW_CONSUMER_TIMEOUT * TRADES_PER_SECOND)):  # 3 timeouts
                    await anext(reading)
        finally:
            trades.cancel()
            await reading.aclose()
            stalled.close()
