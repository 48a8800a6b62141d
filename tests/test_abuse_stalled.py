"""Clients that stop reading on a busy stream pin kernel memory in their socket send
queues: with the default CLIENT_SEND_BUFFER, 100 of them hold well under 100 MB in
all (reported by /metrics), and a normal client keeps its stream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bench.abuse import PUMP_SYMBOL, abuse_rig
from bench.stuck import open_never_reading_client
from tests.test_abuse_frames import assert_absorbed

pytestmark = pytest.mark.slow
STALLED = 100


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
