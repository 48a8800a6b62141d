"""Clients that stop reading on a busy stream pin kernel memory in their socket send
queues: with the default CLIENT_SEND_BUFFER, 100 of them hold well under 100 MB in
all (reported by /metrics), and a normal client keeps its stream. Server-Sent Events
streams that stop reading are capped alike, and reaped: their symbols and per-address
slots are released."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from bench.abuse import PUMP_SYMBOL, abuse_rig
from bench.attacks import closed_by_peer
from bench.stuck import open_never_reading_client, open_never_reading_stream, send_queues
from tests.support.abuse import assert_absorbed
from tests.support.helpers import poll_until

pytestmark = pytest.mark.slow
STALLED = 100
ATTACKER = "127.0.0.3"


async def all_closed_by_peer(sockets: list[socket.socket]) -> bool:
    return all(closed_by_peer(sock) for sock in sockets)


async def test_a_hundred_stalled_clients_pin_a_bounded_amount_of_memory() -> None:
    async with abuse_rig(pump_per_second=2000) as rig:
        stuck: list[socket.socket] = []
        peak = 0.0

        async def stall() -> None:
            nonlocal peak
            subscribe = f'{{"action":"subscribe","symbols":["{PUMP_SYMBOL}"]}}'
            for index in range(STALLED):  # 50 per address, within each one's burst
                local = f"127.0.0.{3 + index // 50}"
                stuck.append(
                    await open_never_reading_client("127.0.0.1", rig.port, subscribe, local=local)
                )
            while True:
                queued = (await rig.metrics())["gateway_client_send_queue_bytes"]
                peak = max(peak, queued)
                await asyncio.sleep(0.2)

        try:
            measure, _ = await rig.measure(stall, seconds=8)
            assert_absorbed(measure)
            # They did fill up (the figure is real), and stayed far under ~100 MB.
            assert 10 * 2**20 < peak < 70 * 2**20, peak / 2**20
        finally:
            for sock in stuck:
                sock.close()


async def test_stalled_event_streams_are_reaped_and_capped_in_the_kernel() -> None:
    streams, send_buffer = 10, 262_144
    env = {
        "SLOW_CONSUMER_TIMEOUT": "2",
        "CLIENT_SEND_BUFFER": str(send_buffer),
        "MAX_CONNECTIONS_PER_ADDRESS": str(streams),
    }
    async with (
        abuse_rig(env, pump_per_second=1000) as rig,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ATTACKER, 0))) as same,
    ):
        stuck: list[socket.socket] = []
        url = f"{rig.base_url}/stream?symbols=AAPL,ZZSTALL"

        async def stall() -> tuple[int, int, float]:
            for _ in range(streams):
                stuck.append(
                    await open_never_reading_stream(
                        "127.0.0.1", rig.port, url.removeprefix(rig.base_url), local=ATTACKER
                    )
                )
            while (await rig.health())[1]["clients"] < 1 + streams:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # /health is the only view of the server's count
            async with same.get(url) as response:  # the address's slots are all taken
                refused = response.status
            loop = asyncio.get_running_loop()
            started, peak = loop.time(), 0
            while True:
                peak = max([peak, *send_queues(rig.port, ATTACKER)])
                _, health, _ = await rig.health()
                if health["clients"] == 1 and health["symbols"] == ["AAPL"]:
                    return refused, peak, loop.time() - started  # the bystander alone
                await asyncio.sleep(0.1)

        try:
            # The window ends when the streams are reaped (at most 12 s), not at 12 s.
            measure, result = await rig.measure(stall, seconds=12, ends_with_attack=2)
            assert result is not None, "the stalled streams were never reaped"
            refused, peak, took = result
            assert refused == 429
            # Writes paused once the buffers filled (about 2.5 s at this rate) and the
            # server cut the streams SLOW_CONSUMER_TIMEOUT later; their clients never
            # closed anything.
            assert took < 8, took
            # /health drops a client when the server cuts it; the cut reaches each
            # socket through the kernel a moment later (two events, either first).
            await poll_until(lambda: all_closed_by_peer(stuck), timeout=2)
            # The kernel queued what CLIENT_SEND_BUFFER allows (Linux doubles it and
            # counts its overhead in it), not the megabytes of its autotuning.
            assert send_buffer / 2 < peak <= 2 * send_buffer, peak
            assert_absorbed(measure)
            # Their per-address slots are free again: the address may open a stream.
            async with same.get(url) as response:
                assert response.status == 200
        finally:
            for sock in stuck:
                sock.close()
