"""`python -m bench --scenario abuse`: every attack class, sustained for a while against
one gateway process with default settings, one after the other; each row reports the
bystander's update rate without and with the attack, its median latency and longest
wait between two updates during it, /health's worst latency, and the gateway's RSS
before, at its peak and after. The attacker reconnects as soon as it is cut, so each
attack lasts the whole window."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson

from bench.abuse import PUMP_SYMBOL, AbuseRig, abuse_rig
from bench.attacks import (
    OP_TEXT,
    client_frame,
    closed_by_peer,
    empty_continuations,
    frame_flood,
    http_hammer,
    huge_header,
    open_idle_sockets,
    ping_batch,
    slowloris,
    tcp_connect,
    ws_handshake,
)
from bench.bar_attacks import measured_bar_attack
from bench.config import Config
from bench.dialect_attacks import finnhub_symbol_sets, health_with_idle_clients
from bench.spend_attacks import OWN_RIG_ATTACKS, measured_own_rig_attack
from bench.stuck import open_never_reading_client

Attack = Callable[[AbuseRig, float], Coroutine[Any, Any, dict[str, Any]]]


async def _again(seconds: float, one: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Repeat `one` until `seconds` pass; how many rounds ran."""
    rounds, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await one()
        except (OSError, aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.1)  # refused (429 or 503): the attacker just retries
        rounds += 1
    return rounds


def _flood(batch: tuple[bytes, int], first: bytes = b"") -> Attack:
    async def attack(rig: AbuseRig, seconds: float) -> dict[str, Any]:
        async def one() -> None:
            sock = await ws_handshake("127.0.0.1", rig.port, "127.0.0.3", receive_buffer=4096)
            try:
                await frame_flood(sock, batch, seconds=seconds, first=first)
            finally:
                sock.close()

        return {"connections": await _again(seconds, one)}

    return attack


async def reading_pinger(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    local = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))
    async with aiohttp.ClientSession(connector=local) as session:

        async def one() -> None:
            async with session.ws_connect(rig.ws_url) as ws:
                reading = asyncio.create_task(_drain(ws))
                while not ws.closed:
                    await ws.ping(b"x")
                    await asyncio.sleep(0)
                await reading

        return {"connections": await _again(seconds, one)}


async def giant_headers(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    async def one() -> None:
        await huge_header("127.0.0.1", rig.port, "127.0.0.3", total=50 * 1024 * 1024)

    return {"requests": await _again(seconds, one)}


async def slow_requests(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    async def one_address(local: str) -> None:
        await _again(seconds, lambda: _slowloris(rig, local, seconds))

    await asyncio.gather(*(one_address(f"127.0.0.{3 + index}") for index in range(30)))
    return {"addresses": 30}


async def _slowloris(rig: AbuseRig, local: str, seconds: float) -> None:
    await slowloris("127.0.0.1", rig.port, local, interval=0.5, limit=seconds)


async def idle_sockets(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    opened: list[socket.socket] = []
    try:
        for last in range(3, 23):  # 20 addresses, 100 sockets each
            opened += await open_idle_sockets("127.0.0.1", rig.port, f"127.0.0.{last}", 100)
        await asyncio.sleep(seconds)
        return {"sockets_opened": len(opened)}
    finally:
        for sock in opened:
            sock.close()


async def connection_hog(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    accepted = refused = 0
    local = aiohttp.TCPConnector(local_addr=("127.0.0.220", 0), limit=0)
    session = aiohttp.ClientSession(connector=local)
    sockets = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and accepted + refused < 10_000:
            try:
                sockets.append(await session.ws_connect(rig.ws_url))
                accepted += 1
            except aiohttp.WSServerHandshakeError:
                refused += 1
                await asyncio.sleep(0.01)
        return {"accepted": accepted, "refused": refused}
    finally:
        for ws in sockets:
            await ws.close()
        await session.close()


async def symbol_churn(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    symbols = [f"ZZ{index}" for index in range(50)]
    before = len(rig.simulator.received)
    local = aiohttp.TCPConnector(local_addr=("127.0.0.230", 0))
    async with (
        aiohttp.ClientSession(connector=local) as session,
        session.ws_connect(rig.ws_url) as ws,
    ):
        reading = asyncio.create_task(_drain(ws))
        deadline, sent = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            action = "subscribe" if sent % 2 == 0 else "unsubscribe"
            await ws.send_str(orjson.dumps({"action": action, "symbols": symbols}).decode())
            sent += 1
            await asyncio.sleep(0.125)
        reading.cancel()
        await asyncio.wait([reading])
    return {"requests": sent, "upstream_frames": len(rig.simulator.received) - before}


async def stalled_clients(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    subscribe = f'{{"action":"subscribe","symbols":["{PUMP_SYMBOL}"]}}'
    stuck = [
        await open_never_reading_client(
            "127.0.0.1", rig.port, subscribe, local=f"127.0.0.{3 + i // 50}"
        )
        for i in range(100)
    ]
    peak = 0.0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, (await rig.metrics())["gateway_client_send_queue_bytes"])
            await asyncio.sleep(0.5)
        return {"send_queue_peak_mib": round(peak / 2**20, 1)}
    finally:
        for sock in stuck:
            sock.close()


async def enormous_messages(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    subscribers = []
    local = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0), limit=0)
    async with aiohttp.ClientSession(connector=local) as session:
        for _ in range(50):
            ws = await session.ws_connect(rig.ws_url)
            await ws.send_str('{"action":"subscribe","symbols":["HOT"]}')
            subscribers.append(asyncio.create_task(_drain(ws)))
        await rig.simulator.wait_for(lambda: "HOT" in rig.simulator.subscribed_symbols(), 15)
        sent, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            now_ms = int(time.time() * 1000)
            trades = [
                {"s": "HOT", "p": round(10 + i / 10_000, 4), "t": now_ms, "v": 1}
                for i in range(85_000)
            ]
            await rig.simulator.send_raw(orjson.dumps({"type": "trade", "data": trades}).decode())
            sent += 1
            await asyncio.sleep(2)
        for task in subscribers:
            task.cancel()
        await asyncio.wait(subscribers)
    return {"messages_of_85000_trades": sent}


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _message in ws:
        pass


async def http_hammering(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    """Eight kept-alive connections from one address requesting /metrics back to back."""
    statuses: Counter[int] = Counter()
    hammer = asyncio.create_task(
        http_hammer(rig.base_url, "127.0.0.3", "/metrics", concurrency=8, statuses=statuses)
    )
    await asyncio.sleep(seconds)
    hammer.cancel()
    await asyncio.wait([hammer])
    return {"ok": statuses[200], "refused_429": statuses[429]}


async def stalled_streams(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    """Streams (`/stream`) opened from one address and never read."""
    loop = asyncio.get_running_loop()
    request = f"GET /stream?symbols={PUMP_SYMBOL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    opened: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = await tcp_connect("127.0.0.1", rig.port, "127.0.0.3", receive_buffer=4096)
            await loop.sock_sendall(sock, request.encode())
            opened.append(sock)
        await asyncio.sleep(seconds)
        return {"streams": len(opened), "cut": sum(closed_by_peer(sock) for sock in opened)}
    finally:
        for sock in opened:
            sock.close()


async def cooperating_addresses(rig: AbuseRig, seconds: float) -> dict[str, Any]:
    """Two addresses subscribing each other's symbols in chunks, to hold more of the
    upstream than their shares (each symbol then costs each of them half)."""
    names = [f"ZC{index:03}" for index in range(120)]
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))
        for local in ("127.0.0.3", "127.0.0.4")
    ]
    try:
        sockets = [await session.ws_connect(rig.ws_url) for session in sessions]
        readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
        deadline = time.monotonic() + seconds
        for start in range(0, len(names), 10):
            chunk = names[start : start + 10]
            for ws in sockets:  # the same chunk from both: shared from the start
                await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": chunk}).decode())
            if time.monotonic() > deadline:
                break
        _, health, _ = await rig.health()
        held = len([name for name in health["symbols"] if name.startswith("ZC")])
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        for task in readers:
            task.cancel()
        await asyncio.wait(readers)
        return {"symbols_held": held}
    finally:
        for session in sessions:
            await session.close()


ATTACKS: dict[str, Attack] = {
    "ping flood, never reading": _flood(ping_batch()),
    "ping flood, reading pongs": reading_pinger,
    "empty continuation frames": _flood(
        empty_continuations(), client_frame(OP_TEXT, b"{", fin=False)
    ),
    "50 MB header values": giant_headers,
    "slowloris, 30 addresses": slow_requests,
    "2,000 idle sockets, 20 addresses": idle_sockets,
    "one address opens sockets nonstop": connection_hog,
    "one client churns 50 symbols": symbol_churn,
    "100 never-reading clients": stalled_clients,
    "85,000-trade upstream messages": enormous_messages,
    "/metrics hammered, 8 connections": http_hammering,
    "20 never-reading /stream clients": stalled_streams,
    "two addresses cooperate on symbols": cooperating_addresses,
    "/ clients on many symbol sets, 20k-trade msgs": finnhub_symbol_sets,
    "/health hammered, 1,000 idle clients": health_with_idle_clients,
}
# Attacks that need a rig of their own (bench/bar_attacks.py): a paid plan's symbols
# with full 1s histories, or a fast pump for long batches.
BAR_ATTACKS = {
    "history flap, 40 sockets x 50 symbols": ("flap", 40),
    "40 never-reading batch churners": ("churners", 40),
    "150 never-reading bar subscribers": ("stuck", 150),
}


async def abuse(config: Config) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with abuse_rig() as rig:
        for name, attack in ATTACKS.items():
            measure, result = await rig.measure(
                lambda attack=attack: attack(rig, config.abuse_seconds),  # type: ignore[misc]
                seconds=config.abuse_seconds + config.abuse_tail,
                baseline=config.abuse_baseline,
            )
            rows.append({"attack": name, **measure.as_dict(), "attack_result": result})
            await rig.settled(config.abuse_pause)
        _, health, _ = await rig.health()
        symbols, rss = len(health["symbols"]), round(rig.rss_mib(), 1)
        rows.append({"attack": "after all", "clients": health["clients"], "symbols": symbols,
                     "rss_mib": rss})  # fmt: skip
    own_rig = {"baseline": config.abuse_own_baseline, "tail": config.abuse_tail}
    for name, (kind, count) in BAR_ATTACKS.items():
        measured = await measured_bar_attack(kind, count, config.abuse_seconds, {}, **own_rig)
        rows.append({**measured, "attack": name})
    for name in OWN_RIG_ATTACKS:  # bench/spend_attacks.py: the REST budget, the store
        rows.append(await measured_own_rig_attack(name, config.abuse_seconds, **own_rig))
    return rows


def abuse_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'attack':<36} {'bystander/s before':>18} {'during':>8} {'ratio':>6} "
        f"{'median ms':>9} {'max gap ms':>10} {'/health max ms':>15} "
        f"{'RSS MiB before/peak/after':>26}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if "bystander_ratio" not in row:
            lines.append(
                f"{row['attack']:<36} clients={row['clients']} symbols={row['symbols']} "
                f"rss={row['rss_mib']} MiB"
            )
            continue
        rss = "/".join(str(value) for value in row["rss_mib_before_peak_after"])
        lines.append(
            f"{row['attack'][:36]:<36} {row['bystander_rate_before']:>18} "
            f"{row['bystander_rate_during']:>8} {row['bystander_ratio']:>6} "
            f"{row.get('bystander_latency_median_ms', ''):>9} "
            f"{row.get('bystander_gap_max_ms', ''):>10} {row['health_max_ms']:>15} {rss:>26}"
        )
    return "\n".join(lines)
