"""Attacks before any WebSocket exists: a giant header, a request sent a byte at a time,
sockets that connect and never send, enough of them to exhaust file descriptors, and
plain HTTP requests back to back. Each is refused with a clear status or closed in
bounded time, while a normal client on another address keeps streaming and /health
answers within a second."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import aiohttp
import pytest

from bench.abuse import abuse_rig
from bench.attacks import (
    closed_by_peer,
    http_hammer,
    huge_header,
    open_idle_sockets,
    slowloris,
)
from tests.support.abuse import assert_absorbed

pytestmark = pytest.mark.slow


async def test_a_giant_header_gets_431_before_it_is_buffered() -> None:
    async with abuse_rig() as rig:
        measure, result = await rig.measure(
            lambda: huge_header("127.0.0.1", rig.port, "127.0.0.3", total=100 * 1024 * 1024),
            seconds=3,
        )
        assert result is not None
        status, took = result
        assert status == 431 and took < 2, result
        assert_absorbed(measure, rss_growth_mib=10)


async def test_a_request_sent_a_byte_at_a_time_is_cut_at_the_deadline() -> None:
    async with abuse_rig({"HANDSHAKE_TIMEOUT": "1.5"}) as rig:
        measure, result = await rig.measure(
            lambda: slowloris("127.0.0.1", rig.port, "127.0.0.3", interval=0.2, limit=10),
            seconds=3,
        )
        assert result is not None
        status, took = result
        assert status == 408 and 1.4 < took < 3, result
        assert_absorbed(measure)
        assert (await rig.metrics())['gateway_refusals_total{reason="request_timeout"}'] == 1


async def test_idle_sockets_are_capped_per_address_and_closed_at_the_deadline() -> None:
    env = {"HANDSHAKE_TIMEOUT": "2", "MAX_PENDING_PER_ADDRESS": "32"}
    async with abuse_rig(env) as rig:
        opened: list[socket.socket] = []

        async def open_many() -> None:
            opened.extend(await open_idle_sockets("127.0.0.1", rig.port, "127.0.0.3", 200))

        try:
            measure, _ = await rig.measure(open_many, seconds=1, baseline=1)
            # Past 32 unfinished requests from one address, the rest are turned away.
            await asyncio.sleep(0.2)
            refused_at_once = sum(closed_by_peer(sock) for sock in opened)
            assert refused_at_once >= len(opened) - 32, (refused_at_once, len(opened))
            # The 32 it kept are closed at the deadline, by themselves.
            async with asyncio.timeout(5):
                while not all(closed_by_peer(sock) for sock in opened):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # a kernel socket state: nothing to await
            assert_absorbed(measure)
            metrics = await rig.metrics()
            assert metrics['gateway_refusals_total{reason="pending_per_address"}'] >= 100
            assert "too many unfinished requests from one address" in rig.log_text()
        finally:
            for sock in opened:
                sock.close()


async def test_the_open_socket_cap_refuses_before_descriptors_run_out_and_says_so() -> None:
    env = {"HANDSHAKE_TIMEOUT": "2", "MAX_CONNECTIONS": "60", "MAX_PENDING_PER_ADDRESS": "32"}
    async with abuse_rig(env) as rig:
        opened: list[socket.socket] = []

        async def from_many_addresses() -> None:
            for last in range(3, 9):  # six addresses, 30 sockets each: 180 > 60
                opened.extend(await open_idle_sockets("127.0.0.1", rig.port, f"127.0.0.{last}", 30))

        try:
            measure, _ = await rig.measure(from_many_addresses, seconds=1.5, baseline=1)
            await asyncio.sleep(0.2)
            refused = sum(closed_by_peer(sock) for sock in opened)
            assert refused >= len(opened) - 60, (refused, len(opened))
            assert "open sockets at the limit (60)" in rig.log_text()
            # Connected clients never noticed; once the idle ones time out, new ones work.
            assert measure.ratio >= 0.7, measure
            async with asyncio.timeout(5):
                while not all(closed_by_peer(sock) for sock in opened):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            status, _, took = await rig.health()
            assert status == 200 and took < 1000
        finally:
            for sock in opened:
                sock.close()


async def test_a_kept_alive_connection_cannot_trickle_its_next_request() -> None:
    async with abuse_rig({"HANDSHAKE_TIMEOUT": "1"}) as rig:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", rig.port, local_addr=("127.0.0.3", 0)
        )
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            await reader.readexactly(length)
            writer.write(b"GET /health HTTP/1.1\r\n")  # the next request, a byte at a time
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = b""
            async with asyncio.timeout(5):
                # The server's end is the end of the stream or a reset, whichever this
                # client meets first, on a write or a read: both are the connection cut.
                while True:
                    try:
                        writer.write(b"X")
                        await writer.drain()
                        async with asyncio.timeout(0.2):
                            chunk = await reader.read(1024)
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        break
                    if not chunk:
                        break
                    answer += chunk
            assert loop.time() - started < 2.5  # cut at the 1 s deadline, like a first request
            # Whatever arrived before the end is the 408 (a reset may have overtaken it).
            assert not answer or answer.startswith(b"HTTP/1.1 408"), answer
        finally:
            writer.close()


async def test_an_address_hammering_metrics_gets_429_while_others_are_served() -> None:
    async with abuse_rig() as rig:
        statuses: Counter[int] = Counter()
        slowest = {"/quote/AAPL": 0.0, "/health": 0.0}
        answered: Counter[int] = Counter()
        local = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))

        async def attack() -> None:
            hammer = http_hammer(
                rig.base_url, "127.0.0.3", "/metrics", concurrency=8, statuses=statuses
            )
            hammering = asyncio.create_task(hammer)
            try:
                async with aiohttp.ClientSession(connector=local) as other:
                    while True:  # another address, meanwhile, a few times a second
                        for path in slowest:
                            started = time.perf_counter()
                            async with other.get(rig.base_url + path) as response:
                                await response.read()
                                answered[response.status] += 1
                            slowest[path] = max(slowest[path], time.perf_counter() - started)
                        await asyncio.sleep(0.2)
            finally:
                hammering.cancel()
                await asyncio.wait([hammering])

        measure, _ = await rig.measure(attack, seconds=4)
        assert_absorbed(measure)
        # The default allowance (20 a second, bursts of 100) and no more; every 429 says
        # when to come back.
        assert statuses[429] > 10 * statuses[200] and statuses[200] <= 100 + 20 * 5, statuses
        assert statuses[-1] == 0, statuses
        assert set(answered) == {200} and answered[200] >= 20, answered
        assert max(slowest.values()) < 1, slowest
        metrics = await rig.metrics()
        # (at most one per connection was answered after the attacker stopped counting)
        refused = metrics['gateway_refusals_total{reason="address_requests"}']
        assert statuses[429] <= refused <= statuses[429] + 8
