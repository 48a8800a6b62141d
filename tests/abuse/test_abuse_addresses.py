"""One address cannot take every slot: connections and handshakes per address are
capped (HTTP 429 with Retry-After), other addresses are not affected, and the address
comes from X-Forwarded-For only when the peer is a trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import pytest

from bench.abuse import AbuseRig, abuse_rig
from tests.support.abuse import assert_absorbed

pytestmark = pytest.mark.slow


Opened = tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]


async def handshake(
    rig: AbuseRig, local: str, **headers: str
) -> tuple[int, str | None, Opened | None]:
    """(status, Retry-After, the open socket or None) of one handshake from `local`."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))
    try:
        ws = await session.ws_connect(rig.ws_url, headers=headers)
    except aiohttp.WSServerHandshakeError as refused:
        await session.close()
        retry = refused.headers.get("Retry-After") if refused.headers else None
        return refused.status, retry, None
    return 101, None, (session, ws)


async def close_all(opened: Sequence[Opened | None]) -> None:
    for item in opened:
        if item is None:
            continue
        session, ws = item
        await ws.close()
        await session.close()


async def test_connections_per_address_are_capped_and_others_still_get_in() -> None:
    env = {"MAX_CONNECTIONS_PER_ADDRESS": "40", "ADDRESS_HANDSHAKE_BURST": "1000"}
    async with abuse_rig(env) as rig:
        opened: list[Opened | None] = []
        statuses: list[int] = []

        async def hog() -> None:
            for _ in range(60):
                status, retry, socket = await handshake(rig, "127.0.0.3")
                statuses.append(status)
                if socket is not None:
                    opened.append(socket)
                else:
                    assert retry == "10"

        try:
            measure, _ = await rig.measure(hog, seconds=3, baseline=1)
            assert statuses.count(101) == 40 and statuses.count(429) == 20, statuses
            assert_absorbed(measure)
            status, _, other = await handshake(rig, "127.0.0.4")  # another address: fine
            assert status == 101
            await close_all([other])
            assert (await rig.metrics())[
                'gateway_refusals_total{reason="address_connections"}'
            ] == 20
        finally:
            await close_all(opened)


async def test_handshakes_per_address_are_rate_limited() -> None:
    env = {"ADDRESS_HANDSHAKE_RATE": "5", "ADDRESS_HANDSHAKE_BURST": "10"}
    async with abuse_rig(env) as rig:
        results = [await handshake(rig, "127.0.0.3") for _ in range(20)]
        opened: list[Opened | None] = [socket for _, _, socket in results]
        try:
            statuses = [status for status, _, _ in results]
            assert statuses[:10] == [101] * 10 and 429 in statuses[10:], statuses
            assert all(retry is not None and int(retry) >= 1 for s, retry, _ in results if s == 429)
            await asyncio.sleep(0.5)  # the bucket refills at 5 a second
            status, _, socket = await handshake(rig, "127.0.0.3")
            assert status == 101
            opened.append(socket)
        finally:
            await close_all(opened)


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    env = {"MAX_CONNECTIONS_PER_ADDRESS": "2", "FORWARDED_ALLOW_IPS": "127.0.0.9"}
    async with abuse_rig(env) as rig:
        opened: list[Opened | None] = []
        try:
            # From an untrusted peer the header is ignored: its own address is counted.
            for claimed in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
                status, _, socket = await handshake(
                    rig, "127.0.0.3", **{"X-Forwarded-For": claimed}
                )
                opened.extend([socket] if socket else [])
            assert len(opened) == 2
            # Through the trusted proxy, each forwarded client has its own allowance.
            for claimed in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"):
                status, _, socket = await handshake(
                    rig, "127.0.0.9", **{"X-Forwarded-For": claimed}
                )
                assert status == 101, claimed
                opened.append(socket)
            status, _, _ = await handshake(rig, "127.0.0.9", **{"X-Forwarded-For": "10.0.0.1"})
            assert status == 429
        finally:
            await close_all(opened)
