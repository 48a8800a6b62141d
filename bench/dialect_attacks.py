"""Two attack classes of the abuse scenario (bench/abuse_runs.py), against default
settings: Finnhub-dialect (`/`) clients spread over as many symbol sets as their
addresses may make, fed 20,000-trade upstream messages; and `/health` hammered while a
thousand idle clients are connected. Loopback only; each lasts `seconds` and closes
everything it opened.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

from bench.abuse import AbuseRig
from bench.attacks import http_hammer, ws_handshake

SET_ADDRESSES = [f"127.0.0.{last}" for last in range(140, 144)]
IDLE_ADDRESSES = [f"127.0.0.{last}" for last in range(120, 140)]  # 50 each: the burst
SET_SYMBOLS = [f"DS{index}" for index in range(10)]  # an address's fair share, shared


async def finnhub_symbol_sets(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    """50 `/` clients from each of 4 addresses, each on its own 3-symbol set (the
    address's `MAX_SYMBOL_SETS_PER_ADDRESS` refuses the rest), and a 20,000-trade
    message over those symbols every 2 s."""
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0), limit=0))
        for local in SET_ADDRESSES
    ]
    errors: Counter[str] = Counter()
    frames = 0
    readers: list[asyncio.Task[None]] = []

    async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal frames
        async for message in ws:
            if message.data.startswith('{"type":"error"'):
                errors[orjson.loads(message.data)["msg"].split(" (")[0].split(";")[0]] += 1
            elif message.data.startswith('{"type":"trade"'):
                frames += 1

    sets = itertools.cycle(itertools.combinations(SET_SYMBOLS, 3))
    deadline = time.monotonic() + seconds  # connecting included: the window's length
    try:
        for session in sessions:
            for _ in range(50):
                try:
                    ws = await session.ws_connect(f"ws://127.0.0.1:{rig.port}/")
                except aiohttp.WSServerHandshakeError:
                    errors["handshake refused"] += 1
                    continue
                for symbol in next(sets):
                    await ws.send_str(f'{{"type":"subscribe","symbol":"{symbol}"}}')
                readers.append(asyncio.create_task(read(ws)))
        sent = 0
        while time.monotonic() < deadline:
            now_ms = int(time.time() * 1000)
            trades = [
                {"s": SET_SYMBOLS[index % len(SET_SYMBOLS)], "p": round(10 + index / 1000, 3),
                 "t": now_ms, "v": 1}
                for index in range(20_000)
            ]  # fmt: skip
            await rig.simulator.send_raw(orjson.dumps({"type": "trade", "data": trades}).decode())
            sent += 1
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return {"clients": len(readers), "messages_of_20000_trades": sent,
                "frames_received": frames, "refused": dict(errors)}  # fmt: skip
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for session in sessions:
            await session.close()


async def health_with_idle_clients(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    """1,000 idle `/ws` clients (50 from each of 20 addresses) and one more address
    requesting /health back to back on 8 kept-alive connections."""
    idle: list[socket.socket] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds  # connecting included: the window's length
    hammer: asyncio.Task[None] | None = None
    try:
        for local in IDLE_ADDRESSES:
            for _ in range(50):
                try:
                    idle.append(await ws_handshake("127.0.0.1", rig.port, local))
                except ConnectionError:
                    break  # that address's handshake allowance is spent
        hammer = asyncio.create_task(
            http_hammer(rig.base_url, "127.0.0.119", "/health", concurrency=8, statuses=statuses)
        )
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return {"idle_clients": len(idle), "health_answered": statuses[200],
                "health_refused": sum(statuses.values()) - statuses[200]}  # fmt: skip
    finally:
        if hammer is not None:
            hammer.cancel()
            await asyncio.gather(hammer, return_exceptions=True)
        for sock in idle:
            sock.close()
