"""A client that never reads must not delay others, grow memory, or stay forever."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import orjson
import pytest

from bench.stuck import masked_text_frame, open_never_reading_client
from tests.support.helpers import Market, poll_until, run_gateway, settings_for, trade


async def trickle(sock: socket.socket) -> None:
    """Read 4 KiB every 10 ms: a reader far slower than its stream, but one the
    kernel sees progress from (a client that never reads is ended sooner, below the
    app: tests/delivery/test_stalled_readers.py)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while await loop.sock_recv(sock, 4096):  # noqa: ASYNC110 - the pace of a slow reader
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_a_client_reading_too_slowly_is_conflated_then_closed_while_others_stream(
    market: Market,
) -> None:
    settings = settings_for(market, client_outbox_size=64, slow_consumer_timeout=0.5)
    async with run_gateway(settings) as gateway:
        reader = await gateway.connect()
        await reader.wait_upstream_connected()
        await reader.subscribe("AAPL", "MSFT")
        port = int(gateway.base_url.rsplit(":", 1)[1])
        subscribe = '{"action":"subscribe","symbols":["AAPL","MSFT"]}'
        stuck = await open_never_reading_client("127.0.0.1", port, subscribe)
        reading = asyncio.create_task(trickle(stuck))
        with stuck:
            hub = gateway.gateway.running.hub

            async def stuck_client_subscribed() -> None:
                while len(hub.subscribers_of("AAPL")) < 2:  # noqa: ASYNC110 - no event for this
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(stuck_client_subscribed(), 5)
            price = 100.0
            # Lockstep: each batch must reach the reading client before the next is sent,
            # so a broadcaster waiting on the stuck client would time this test out.
            for _batch in range(3000):
                batch: list[dict[str, Any]] = []
                for _ in range(50):
                    price += 0.01
                    batch.append(trade("AAPL" if len(batch) % 2 else "MSFT", round(price, 2)))
                await market.simulator.send_trades(batch)
                for expected in batch:
                    update = await reader.expect("price_update", timeout=2)
                    assert update["data"]["price"] == expected["p"]
                if hub.stats.slow_consumer_disconnects:
                    break
            assert hub.stats.slow_consumer_disconnects == 1
            assert hub.stats.conflated_updates > 0

            async def evicted_client_gone() -> bool:
                return bool((await gateway.health())["clients"] == 1)

            # Closing gives the stuck client a short grace, then aborts its socket.
            await poll_until(evicted_client_gone)
            assert (await gateway.health())["slow_consumer_disconnects"] == 1
            assert len(hub.subscribers_of("AAPL")) == 1
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading
        # The reading client was never disturbed.
        await market.simulator.send_trades([trade("AAPL", 1.0)])
        assert (await reader.expect("price_update"))["data"]["price"] == 1.0


@pytest.mark.slow
async def test_a_client_that_floods_requests_but_never_reads_is_closed(market: Market) -> None:
    settings = settings_for(market, client_outbox_size=16, slow_consumer_timeout=30)
    async with run_gateway(settings) as gateway:
        bystander = await gateway.connect()
        await bystander.wait_upstream_connected()
        await bystander.subscribe("AAPL")
        port = int(gateway.base_url.rsplit(":", 1)[1])
        # Every request is answered with an error frame the client never reads.
        # Ten rejected symbols make each error frame close to a kilobyte.
        bad = orjson.dumps(
            {"action": "subscribe", "symbols": [f"<{n}{'x' * 40}>" for n in range(10)]}
        )
        flooder = await open_never_reading_client("127.0.0.1", port, bad.decode())
        with flooder:
            frame = masked_text_frame(bad.decode())
            loop = asyncio.get_running_loop()
            hub = gateway.gateway.running.hub
            for _ in range(50_000):
                if hub.stats.slow_consumer_disconnects:
                    break
                try:
                    await loop.sock_sendall(flooder, frame)
                except ConnectionError:
                    break
            assert hub.stats.slow_consumer_disconnects == 1

            async def flooder_gone() -> bool:
                return bool((await gateway.health())["clients"] == 1)

            await poll_until(flooder_gone)
        await market.simulator.send_trades([trade("AAPL", 4.0)])
        assert (await bystander.expect("price_update"))["data"]["price"] == 4.0


async def test_client_send_buffer_caps_each_client_socket(market: Market) -> None:
    async with run_gateway(settings_for(market, client_send_buffer=16384)) as gateway:
        await gateway.connect()
        connections = list(gateway.server.server_state.connections)
        sizes = [
            connection.transport.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF
            )
            for connection in connections
            if connection.transport.get_extra_info("socket") is not None
        ]
        # Linux reports twice the value set (it counts its bookkeeping overhead).
        assert sizes and all(size <= 2 * 16384 for size in sizes)
