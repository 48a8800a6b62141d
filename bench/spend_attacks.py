"""Attacks on what the gateway spends and keeps for its clients: two addresses spending
the key's REST budget (one-off quote lookups and forwarded /api/v1 calls) while a third
subscribes to symbols that need a quote, and one address rotating through new symbols
so the store records ever more of them. With the history reads of
bench/read_attacks.py, each on a rig of its own; used by tests/abuse/test_abuse_*.py and
`python -m bench --scenario abuse`."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import orjson

from bench.abuse import abuse_rig
from bench.read_attacks import history_reads, rig_with_history

SPENDERS = ("127.0.0.3", "127.0.0.4")
THIRD = "127.0.0.5"
HELD = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META"]  # symbols with a quote to fetch
ROTATOR = "127.0.0.3"
ROW_BYTES = 113.7  # a stored bar in SQLite (BENCHMARKS.md)
OWN_RIG_ATTACKS = (
    "two addresses spend the REST budget",
    "one address rotates new symbols",
    "whole histories read, 10 addresses",
)


async def spend(
    base_url: str, local: str, serial: itertools.count[int], refused: dict[str, asyncio.Event]
) -> None:
    """One attacker address: a new one-off lookup and a new forwarded call (nothing
    cached, nothing shared) ten times a second each, whatever the answers; `refused`
    ("quote", "api") is set at the first refusal of each: the address has spent it all."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(path: str) -> None:
            async with session.get(base_url + path) as response:
                await response.read()
                if response.status in (429, 503):
                    refused[path.split("/")[1]].set()

        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                n = next(serial)
                for path in (
                    f"/quote/ZZQ{n}",
                    f"/api/v1/company-news?symbol=AAPL&from=2024-01-01&to=2024-01-02&n={n}",
                ):
                    call = asyncio.create_task(get(path))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
                await asyncio.sleep(0.1)  # the attack's own pace
        finally:
            for call in calls:
                call.cancel()
            if calls:
                await asyncio.wait(calls)


async def rest_spenders(base_url: str, ws_url: str, seconds: float) -> dict[str, float]:
    """SPENDERS spend for `seconds`; once both are refused, THIRD subscribes to HELD:
    how many of their quotes arrived (and how many failed)."""
    serial = itertools.count()
    refused = [{"quote": asyncio.Event(), "api": asyncio.Event()} for _ in SPENDERS]
    spenders = [
        asyncio.create_task(spend(base_url, address, serial, events))
        for address, events in zip(SPENDERS, refused, strict=True)
    ]
    arrived = failed = 0
    connector = aiohttp.TCPConnector(local_addr=(THIRD, 0))
    try:
        async with asyncio.timeout(seconds):
            for event in [event for events in refused for event in events.values()]:
                await event.wait()
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.ws_connect(ws_url) as ws,
            ):
                await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": HELD}).decode())
                async for message in ws:
                    kind = orjson.loads(message.data).get("type")
                    arrived += kind == "quote"
                    failed += kind == "error"
                    if arrived + failed == len(HELD):
                        break
    except TimeoutError:
        pass  # what had not arrived by then never did
    finally:
        for spender in spenders:
            spender.cancel()
        await asyncio.wait(spenders)
    return {"quotes_arrived": arrived, "quotes_failed": failed, "of": len(HELD)}


async def rotate_new_symbols(
    ws_url: str, trade: Callable[[list[str]], Awaitable[None]], seconds: float, store: Path
) -> dict[str, float]:
    """ROTATOR subscribes to 10 new symbols every 2 s (each traded once, as a real market
    would), leaving the previous ones: the symbols accepted and refused, and what the
    store kept meanwhile, long-kept rows (1m and longer) and bytes a minute."""
    rows_before = _long_rows(store)
    started = time.monotonic()
    answers: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(local_addr=(ROTATOR, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(ws_url) as ws,
    ):
        reader = asyncio.create_task(_count_answers(ws, answers))
        try:
            for batch in itertools.count():
                if time.monotonic() - started >= seconds:
                    break
                symbols = [f"ROT{batch}X{index}" for index in range(10)]
                await ws.send_str(
                    orjson.dumps({"action": "subscribe", "symbols": symbols}).decode()
                )
                await asyncio.sleep(0.2)  # the subscribe's turn before the trades
                await trade(symbols)
                await asyncio.sleep(1.8)  # the attack's own pace
                await ws.send_str(
                    orjson.dumps({"action": "unsubscribe", "symbols": symbols}).decode()
                )
        finally:
            reader.cancel()
            await asyncio.wait([reader])
    await asyncio.sleep(1.5)  # the recorder's last writes
    minutes = (time.monotonic() - started) / 60
    rows = (_long_rows(store) - rows_before) / minutes
    return {
        **answers,
        "long_rows_per_minute": round(rows),
        "store_bytes_per_minute": round(rows * ROW_BYTES),
    }


async def _count_answers(ws: aiohttp.ClientWebSocketResponse, answers: Counter[str]) -> None:
    async for message in ws:
        decoded = orjson.loads(message.data)
        if decoded.get("type") == "subscription" and decoded.get("status") == "subscribed":
            answers["symbols_accepted"] += len(decoded["symbols"])
        elif decoded.get("code") == "symbol_quota":
            answers["symbols_refused"] += len(decoded.get("symbols") or [])


def _long_rows(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM bars WHERE interval != '1s'").fetchone()
    return int(count)


async def measured_own_rig_attack(
    name: str, seconds: float, *, baseline: float = 2.0, tail: float = 1.0
) -> dict[str, object]:
    """One of OWN_RIG_ATTACKS on a rig of its own: the measure (the bystander's rate for
    `baseline` seconds, then while the attack runs and `tail` seconds past it) and the
    attack's result."""
    window = {"seconds": seconds + tail, "baseline": baseline}
    async with AsyncExitStack() as stack:
        if name == OWN_RIG_ATTACKS[2]:
            rig = await stack.enter_async_context(rig_with_history())
            statuses: Counter[str] = Counter()
            measure, _ = await rig.measure(lambda: history_reads(rig, statuses, seconds), **window)
            return {"attack": name, **measure.as_dict(), "attack_result": dict(statuses)}
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spend-attack-")))
        store = folder / "bars.sqlite3"
        rig = await stack.enter_async_context(abuse_rig({"BAR_STORE_URL": f"sqlite:///{store}"}))
        if name == OWN_RIG_ATTACKS[0]:
            measure, result = await rig.measure(
                lambda: rest_spenders(rig.base_url, rig.ws_url, seconds), **window
            )
        else:

            async def trade(symbols: list[str]) -> None:
                now = int(time.time() * 1000)
                await rig.simulator.send_trades(
                    [{"s": symbol, "p": 10.0, "t": now, "v": 1} for symbol in symbols]
                )

            # The rotation ends with its 2 s round and the recorder's last writes.
            measure, result = await rig.measure(
                lambda: rotate_new_symbols(rig.ws_url, trade, seconds, store),
                seconds=seconds + 4 + tail,
                baseline=baseline,
            )
        return {"attack": name, **measure.as_dict(), "attack_result": result}
