"""Requests that cost far more to answer than to ask, and clients that pile up what they
are sent: bar histories asked for again and again, never-reading clients moving between
batched delivery groups, one message bigger than a client may leave unread. Each
against the real gateway, with a normal client on another address keeping its stream."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bench.abuse import AbuseRig, abuse_rig
from bench.bar_attacks import (
    ATTACKER,
    BAR_ATTACK_ENV,
    HISTORY_SYMBOLS,
    batch_churners,
    carried_with_history,
    history_flap,
)
from bench.stuck import open_never_reading_client
from stock_gateway.settings import Settings
from tests.support.abuse import assert_absorbed

pytestmark = pytest.mark.slow
UNREAD_OUTPUT = 'gateway_refusals_total{reason="unread_output"}'


async def test_flapping_full_histories_cost_their_bytes_not_the_gateways_cpu() -> None:
    # 40 sockets alternating subscribe_bars / unsubscribe_bars of 50 full 1s histories
    # (~0.9 MB a subscribe) 9 times a second: ~270 MB in 3 s, a whole core, without
    # the budget; the bystander fell from ~100 to ~2 updates a second.
    async with abuse_rig(BAR_ATTACK_ENV) as rig, carried_with_history(rig, HISTORY_SYMBOLS):
        measure, result = await rig.measure(
            lambda: history_flap(rig, sockets=40, seconds=3), seconds=4
        )
        assert_absorbed(measure)
        assert result is not None and result["refused"] > 0
        # What the address may be sent: its minute's allowance, plus what refilled.
        allowance = Settings().history_bytes_per_address
        assert result["bytes_received"] < allowance * (1 + 5 / 60) + 2**20


async def test_never_reading_clients_moving_between_long_batches_hold_bounded_memory() -> None:
    # Each move handed the client its old group's whole pending batch, encoded anew: with
    # batch_ms=60000 on 2000 updates a second, +180 MB in 3 s, never given back.
    async with abuse_rig(pump_per_second=2000) as rig:
        measure, result = await rig.measure(
            lambda: batch_churners(rig, churners=20, seconds=3), seconds=4
        )
        assert_absorbed(measure, rss_growth_mib=50)
        assert result is not None and result["toggles"] > 300  # 540 at 9 a second each


async def test_one_history_bigger_than_a_client_may_leave_unread_cuts_it_at_once() -> None:
    env = {
        "BAR_HISTORY": "3000",  # ~250 KB of 1s history, written in one piece
        "MAX_UNREAD_OUTPUT": "65536",
        "CLIENT_SEND_BUFFER": "4096",  # so the kernel takes little of it
    }
    async with abuse_rig(env) as rig, carried_with_history(rig, ["ZBIG"], bars=3000):
        request = '{"action":"subscribe_bars","symbols":["ZBIG"],"interval":"1s"}'
        sock = await open_never_reading_client("127.0.0.1", rig.port, request, local=ATTACKER)
        try:
            # Nothing else would look for 40 s: the client sends no ping, and it would
            # never answer the server's (every 20 s).
            await _until_counted(rig, UNREAD_OUTPUT, seconds=5)
            assert await _cut(sock, seconds=5)
            assert not rig.bystander_closed
            # The operator was told at start that such histories cut their readers too.
            assert "BAR_HISTORY=3000 makes histories of up to" in rig.log_text()
        finally:
            sock.close()


async def _cut(sock: socket.socket, *, seconds: float) -> bool:
    """True once the server has closed `sock` (reading what it had sent before)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            while await loop.sock_recv(sock, 1 << 16):
                pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset
    return True


async def _until_counted(rig: AbuseRig, metric: str, *, seconds: float) -> None:
    """Until the gateway's /metrics count `metric` (another process: nothing to await)."""
    async with asyncio.timeout(seconds):
        while True:
            if (await rig.metrics()).get(metric, 0) >= 1:
                return
            await asyncio.sleep(0.05)
