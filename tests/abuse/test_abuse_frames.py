"""Frame floods, from one client on its own address: protocol pings read or not,
pongs, empty continuation fragments. Each is cut with its memory released, while a
normal client on another address keeps at least 70% of its update rate and /health
answers within a second."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.abuse import AbuseRig, abuse_rig
from bench.attacks import (
    OP_TEXT,
    FloodResult,
    client_frame,
    empty_continuations,
    frame_flood,
    ping_batch,
    pong_batch,
    ws_handshake,
)
from tests.support.abuse import assert_absorbed

pytestmark = pytest.mark.slow
ATTACKER = "127.0.0.3"


async def flood(rig: AbuseRig, batch: tuple[bytes, int], first: bytes = b"") -> FloodResult:
    # A tiny receive buffer and no reading: whatever the server answers piles up on its side.
    sock = await ws_handshake("127.0.0.1", rig.port, ATTACKER, receive_buffer=4096)
    try:
        return await frame_flood(sock, batch, seconds=10, first=first)
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("name", "batch", "first"),
    [
        ("pings, never reading the pongs", ping_batch(), b""),
        ("unsolicited pongs", pong_batch(), b""),
        (
            "empty continuation fragments",
            empty_continuations(),
            client_frame(OP_TEXT, b"{", fin=False),
        ),
    ],
    # Named, not derived from the random masked bytes: every xdist worker collects the
    # same ids.
    ids=["pings", "pongs", "continuations"],
)
async def test_a_frame_flood_is_cut_and_nobody_else_notices(
    name: str, batch: tuple[bytes, int], first: bytes
) -> None:
    async with abuse_rig() as rig:
        measure, result = await rig.measure(lambda: flood(rig, batch, first), seconds=3)
        assert result is not None and result.cut_by_server, f"{name}: not cut: {result}"
        assert result.seconds < 2, f"{name}: took {result.seconds:.1f}s to cut"
        assert_absorbed(measure)
        refused = await rig.metrics()
        assert refused['gateway_refusals_total{reason="frame_rate"}'] >= 1
        assert "over its frame budget" in rig.log_text()
        assert not rig.bystander_closed


async def test_a_reading_client_that_pings_nonstop_is_closed_with_1008() -> None:
    async with abuse_rig() as rig:

        async def pinger() -> int | None:
            local = aiohttp.TCPConnector(local_addr=(ATTACKER, 0))
            async with (
                aiohttp.ClientSession(connector=local) as session,
                session.ws_connect(rig.ws_url, autoping=True) as ws,
            ):

                async def read() -> int | None:
                    async for message in ws:  # reads its pongs, and everything else
                        if message.type is aiohttp.WSMsgType.CLOSE:
                            break
                    return ws.close_code

                reading = asyncio.create_task(read())
                while not ws.closed:
                    try:
                        await ws.ping(b"x")
                    except ConnectionError:
                        # Our own reader closed the socket while this ping waited to
                        # be written: the close frame it read decides the verdict.
                        break
                    await asyncio.sleep(0)
                return await reading

        measure, code = await rig.measure(pinger, seconds=3)
        # The gateway keeps reading after its close frame until this client's reply (the
        # closing handshake), so no reset can overtake the frame: 1008 is always read.
        assert code == 1008
        assert_absorbed(measure)
