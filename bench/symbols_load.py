"""The symbols scenario's load: many aiohttp WebSocket clients in one process, each on
its own symbols, holding the last price each symbol got (a `price_update`, or a polled
`quote`) and, every second, how long each held price has been out of date.

    python -m bench.symbols_load --url ws://127.0.0.1:8000/ws --simulator http://... \
        --plan plan.json --ramp 420

`plan.json` lists each client's symbols, in the order they arrive: client i connects
and subscribes `i * ramp / clients` seconds after the start (a watchlist app's users
arriving, not all at once). Clients connect from 127.0.0.1-127.0.0.N (`--addresses N`),
so per-address limits bite less. Protocol with the controller: prints `ready` at the
start; on a `stop` line prints one JSON report line (lags per symbol of the clients
arrived, each never-priced one since its own subscription, bench/freshness.py; how
long each symbol took from its first subscriber to its first price; feeds heard;
errors) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.freshness import Held, add_lag, histories, lag_seconds

SAMPLE_SECONDS = 1.0
# (Unix ms, each subscription's price, of the clients arrived so far)
Samples = list[tuple[int, list[Held | None]]]


class Client:
    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols
        self.held: dict[str, Held] = {}
        self.joined_ms: int | None = None  # when it sent its subscription
        self.first_priced_ms: dict[str, int] = {}  # symbol -> when its first price came
        self.feeds: dict[str, str] = {}
        self.errors: Counter[str] = Counter()

    def received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "price_update":
            self._price(message, by_quote=False)
        elif kind == "price_updates":
            for update in message["updates"]:
                self._price(update, by_quote=False)
        elif kind == "quote":
            self._price(message, by_quote=True)
        elif kind == "feed":
            self.feeds[message["symbol"]] = message["feed"]
        elif kind == "error":
            self.errors[str(message.get("code"))] += 1

    def _price(self, update: dict[str, Any], *, by_quote: bool) -> None:
        data = update["data"]
        self.first_priced_ms.setdefault(update["symbol"], int(time.time() * 1000))
        self.held[update["symbol"]] = (int(data["timestamp"]), float(data["price"]), by_quote)
        if not by_quote and "feed" in update:
            self.feeds[update["symbol"]] = update["feed"]


async def run_client(
    session: aiohttp.ClientSession, url: str, client: Client, subscribed: asyncio.Event
) -> None:
    async with session.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": client.symbols}).decode())
        client.joined_ms = int(time.time() * 1000)
        subscribed.set()
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                client.received(orjson.loads(message.data))


async def main(args: argparse.Namespace, plan: list[list[str]]) -> None:
    clients = [Client(symbols) for symbols in plan]
    samples: Samples = []
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{1 + n}", 0))
        )
        for n in range(args.addresses)
    ]
    tasks: list[asyncio.Task[None]] = []  # the clients and the sampler: cancelled at stop
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    tasks.append(asyncio.create_task(arrive(clients, sessions, args, tasks)))
    tasks.append(asyncio.create_task(sample_forever(clients, samples)))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    async with sessions[0].get(args.simulator + "/history") as response:
        market = histories((await response.json(loads=orjson.loads))["history"])
    report = summarise(clients, samples, market)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()
    for session in sessions:
        await session.close()


async def arrive(
    clients: list[Client],
    sessions: list[aiohttp.ClientSession],
    args: argparse.Namespace,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Each client at its time on the ramp; each waits for the one before to subscribe
    (so `joined_ms` grows with the index: the clients arrived are a prefix)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, client in enumerate(clients):
        await asyncio.sleep(max(0.0, start + index * args.ramp / len(clients) - loop.time()))
        subscribed = asyncio.Event()
        session = sessions[index % len(sessions)]
        tasks.append(asyncio.create_task(run_client(session, args.url, client, subscribed)))
        await subscribed.wait()


async def sample_forever(clients: list[Client], samples: Samples) -> None:
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        now_ms = int(time.time() * 1000)
        arrived = [client for client in clients if client.joined_ms is not None]
        held = [client.held.get(symbol) for client in arrived for symbol in client.symbols]
        samples.append((now_ms, held))


def summarise(clients: list[Client], samples: Samples, market: dict[str, Any]) -> dict[str, Any]:
    subscriptions = [
        (symbol, client.joined_ms or 0) for client in clients for symbol in client.symbols
    ]
    lags: dict[str, Counter[int]] = {symbol: Counter() for symbol, _ in subscriptions}
    for sample_ms, held in samples:
        for (symbol, since_ms), price in zip(subscriptions, held, strict=False):
            history = market.get(symbol, ([], []))
            add_lag(lags[symbol], lag_seconds(history, price, sample_ms, since_ms))
    arrived = [client for client in clients if client.joined_ms is not None]
    first_wanted: dict[str, int] = {}
    first_priced: dict[str, int] = {}
    for client in arrived:
        for symbol in client.symbols:
            first_wanted[symbol] = min(first_wanted.get(symbol, 1 << 62), client.joined_ms or 0)
        for symbol, at_ms in client.first_priced_ms.items():
            first_priced[symbol] = min(first_priced.get(symbol, 1 << 62), at_ms)
    feeds = {symbol: feed for client in clients for symbol, feed in client.feeds.items()}
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    return {
        "lags": {symbol: dict(counts) for symbol, counts in lags.items() if counts},
        "never_priced": sorted(set(first_wanted) - set(first_priced)),
        "joined_ms": [client.joined_ms for client in clients],
        "first_wanted_ms": first_wanted,
        "first_priced_ms": first_priced,
        "end_ms": samples[-1][0] if samples else 0,
        "feeds": feeds,
        "errors": dict(errors),
        "samples": len(samples),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--simulator", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--addresses", type=int, default=1)
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which clients arrive")
    arguments = parser.parse_args()
    asyncio.run(main(arguments, orjson.loads(Path(arguments.plan).read_bytes())))
