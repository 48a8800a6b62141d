"""Attacks through what a request costs the gateway to answer, on loopback only.

- `history_flap`: sockets from one address alternate `subscribe_bars` and
  `unsubscribe_bars` of many symbols with full histories, inside the message budget:
  each subscribe asks for every symbol's history again.
- `batch_churners`: never-reading clients on a long `batch_ms` toggle one symbol, so
  they move between delivery groups again and again.
- `never_reading_bar_subscribers`: clients that ask for histories and never read them.

The histories come from `carried_with_history`: a reading client on another address
holds the symbols, and the scripted Finnhub sends trades stamped over the last minutes,
so every 1s series is full. Each attack reports what it saw; judging it is the
caller's job (tests/abuse/test_abuse_bars.py). `python -m bench.bar_attacks ATTACK COUNT
SECONDS` runs one against a fresh gateway and prints the rig's measure as JSON (the
figures in BENCHMARKS.md, "Bar histories and batches under attack").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import aiohttp
import orjson

from bench.abuse import PUMP_SYMBOL, AbuseRig, abuse_rig
from bench.attacks import OP_TEXT, client_frame, ws_handshake

ATTACKER = "127.0.0.3"
CARRIER = "127.0.0.4"  # holds the attacked symbols, reading
HISTORY_SYMBOLS = [f"ZH{index}" for index in range(50)]
# One address must be able to hold the 50 symbols and the upstream to carry them.
BAR_ATTACK_ENV = {"MAX_SYMBOLS_PER_ADDRESS": "60", "MAX_UPSTREAM_SYMBOLS": "60"}
TOGGLED = "ZCHURN"


def _text(message: Mapping[str, object]) -> bytes:
    return client_frame(OP_TEXT, orjson.dumps(message))


@asynccontextmanager
async def carried_with_history(
    rig: AbuseRig, symbols: list[str], bars: int = 240
) -> AsyncIterator[None]:
    """`symbols` carried for the length of the block (a reading client on CARRIER holds
    them), each with `bars` closed 1s bars of history."""
    # A paid plan's Finnhub: the free plan's 50 symbols leave no room beside the pump's.
    rig.simulator.max_symbols = max(rig.simulator.max_symbols, len(symbols) + 10)
    connector = aiohttp.TCPConnector(local_addr=(CARRIER, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(rig.ws_url) as ws,
    ):
        request = {"action": "subscribe_bars", "symbols": symbols, "interval": "5m"}
        await ws.send_str(orjson.dumps(request).decode())
        reading = asyncio.create_task(_drain_ws(ws))
        try:
            carried = rig.simulator.subscribed_symbols
            await rig.simulator.wait_for(lambda: set(symbols) <= carried(), 15)
            # Stamped in the past: each trade closes a 1s bar of its own at once.
            first = (int(time.time()) - bars - 2) * 1000
            trades: list[dict[str, object]] = [
                {"s": symbol, "p": 100 + second / 100, "t": first + second * 1000, "v": 1}
                for second in range(bars)
                for symbol in symbols
            ]
            await rig.simulator.send_trades(trades)
            await _until_held(rig, symbols[-1], bars)
            yield
        finally:
            reading.cancel()
            await asyncio.wait([reading])


async def _until_held(rig: AbuseRig, symbol: str, bars: int) -> None:
    url = f"{rig.base_url}/bars/{symbol}?interval=1s"
    async with asyncio.timeout(15):
        while True:
            async with rig.session.get(url) as response:
                if len((await response.json())["t"]) >= bars:
                    return
            await asyncio.sleep(0.05)


@dataclass
class Received:
    bytes: int = 0
    refusals: int = 0  # `rate_limited` errors seen


async def _drain_raw(sock: socket.socket, received: Received) -> None:
    loop = asyncio.get_running_loop()
    with suppress(OSError):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            received.bytes += len(chunk)
            received.refusals += chunk.count(b'"rate_limited"')


async def _drain_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _message in ws:
        pass


async def history_flap(
    rig: AbuseRig,
    *,
    sockets: int,
    seconds: float,
    symbols: list[str] = HISTORY_SYMBOLS,
    per_second: float = 9.0,
) -> dict[str, int]:
    """`sockets` clients from ATTACKER, reading everything, each alternating
    `subscribe_bars` and `unsubscribe_bars` of `symbols` (1s) `per_second` times a second."""
    subscribe = _text({"action": "subscribe_bars", "symbols": symbols, "interval": "1s"})
    unsubscribe = _text({"action": "unsubscribe_bars", "symbols": symbols, "interval": "1s"})
    received = Received()
    loop = asyncio.get_running_loop()

    async def one(sock: socket.socket) -> int:
        reading = asyncio.create_task(_drain_raw(sock, received))
        sent, next_at, deadline = 0, time.monotonic(), time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                await loop.sock_sendall(sock, unsubscribe if sent % 2 else subscribe)
                sent += 1
                next_at += 1 / per_second
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except OSError:
            pass  # closed by the server
        finally:
            reading.cancel()
            await asyncio.wait([reading])
            sock.close()
        return sent

    # One at a time: handshakes in parallel from one address are capped (503).
    opened = [await ws_handshake("127.0.0.1", rig.port, ATTACKER) for _ in range(sockets)]
    sent = await asyncio.gather(*(one(sock) for sock in opened))
    return {"requests": sum(sent), "bytes_received": received.bytes, "refused": received.refusals}


async def batch_churners(
    rig: AbuseRig, *, churners: int, seconds: float, per_second: float = 9.0
) -> dict[str, int]:
    """One reading client and `churners` never-reading ones from ATTACKER, all on
    `batch_ms=60000` and PUMP_SYMBOL; the churners toggle TOGGLED `per_second` times a
    second, moving between two delivery groups each time."""
    path = "/ws?batch_ms=60000"
    subscribe = {"action": "subscribe", "symbols": [PUMP_SYMBOL]}
    toggles = (
        _text({"action": "subscribe", "symbols": [TOGGLED]}),
        _text({"action": "unsubscribe", "symbols": [TOGGLED]}),
    )
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(rig.ws_url + "?batch_ms=60000") as anchor,
    ):
        await anchor.send_str(orjson.dumps(subscribe).decode())
        reading = asyncio.create_task(_drain_ws(anchor))
        opened: list[socket.socket] = []
        try:
            for _ in range(churners):
                sock = await ws_handshake(
                    "127.0.0.1", rig.port, ATTACKER, receive_buffer=4096, path=path
                )
                opened.append(sock)
                await loop.sock_sendall(sock, _text(subscribe))

            async def toggle(sock: socket.socket) -> int:
                sent, next_at = 0, time.monotonic()
                deadline = next_at + seconds
                with suppress(OSError):  # cut by the server
                    while time.monotonic() < deadline:
                        await loop.sock_sendall(sock, toggles[sent % 2])
                        sent += 1
                        next_at += 1 / per_second
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                return sent

            sent = await asyncio.gather(*(toggle(sock) for sock in opened))
            return {"toggles": sum(sent)}
        finally:
            for sock in opened:
                sock.close()
            reading.cancel()
            await asyncio.wait([reading])


async def never_reading_bar_subscribers(
    rig: AbuseRig, *, clients: int, seconds: float, symbols: list[str] = HISTORY_SYMBOLS
) -> dict[str, int]:
    """`clients` sockets from ATTACKER that ask for `symbols`' 1s histories and never
    read, held open for `seconds`."""
    request = _text({"action": "subscribe_bars", "symbols": symbols, "interval": "1s"})
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []
    try:
        for _ in range(clients):
            try:
                sock = await ws_handshake("127.0.0.1", rig.port, ATTACKER, receive_buffer=4096)
            except ConnectionError:
                await asyncio.sleep(0.1)  # over the handshake rate: come back
                continue
            opened.append(sock)
            await loop.sock_sendall(sock, request)
        await asyncio.sleep(seconds)
        return {"opened": len(opened)}
    finally:
        for sock in opened:
            sock.close()


async def measured_bar_attack(
    attack: str,
    count: int,
    seconds: float,
    env: dict[str, str],
    *,
    baseline: float = 2.0,
    tail: float = 1.0,
) -> dict[str, object]:
    """One attack on a rig of its own: the bystander's rate for `baseline` seconds, then
    while the attack runs `seconds` and `tail` seconds past it."""
    window = {"seconds": seconds + tail, "baseline": baseline}
    if attack == "churners":
        async with abuse_rig(env, pump_per_second=2000) as rig:
            measure, result = await rig.measure(
                lambda: batch_churners(rig, churners=count, seconds=seconds), **window
            )
    else:
        rigged = abuse_rig({**BAR_ATTACK_ENV, **env})
        async with rigged as rig, carried_with_history(rig, HISTORY_SYMBOLS):
            if attack == "flap":
                measure, result = await rig.measure(
                    lambda: history_flap(rig, sockets=count, seconds=seconds), **window
                )
            else:
                measure, result = await rig.measure(
                    lambda: never_reading_bar_subscribers(rig, clients=count, seconds=seconds),
                    **window,
                )
    return {"attack": attack, "count": count, **measure.as_dict(), "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("attack", choices=["flap", "churners", "stuck"])
    parser.add_argument("count", type=int, help="sockets, churners or stuck clients")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--env", action="append", default=[], help="a setting, NAME=VALUE")
    args = parser.parse_args()
    env = dict(setting.split("=", 1) for setting in args.env)
    row = asyncio.run(measured_bar_attack(args.attack, args.count, args.seconds, env))
    sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
