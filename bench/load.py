"""Benchmark load: many picows WebSocket clients in one process, recording what arrives.

    python -m bench.load --url ws://127.0.0.1:8000/ws --clients 1000 --symbols A,B,C

Each client subscribes to its share of the symbols (`symbols_for`) and, for every
`price_update` (also each update of a `price_updates` batch), records the latency from
the simulator's send time (the trade's `timestamp`, Unix ms) to now, bucketed by the
second it was sent in. Volumes carry the simulator's per-symbol sequence numbers, so
reordering is counted too. `--stuck N` adds N clients that subscribe and never read.
`--query batch_ms=50` connects with delivery options; `--sse` makes the clients
`GET /stream` (Server-Sent Events, aiohttp) instead of WebSockets. `--bars 1m` makes
the clients `subscribe_bars` instead and count the `bar` frames they receive (a
gateway without bars answers with an error, which counts as the answer). `--finnhub`
makes them speak Finnhub's own protocol (connect to `/`, one
`{"type":"subscribe","symbol":...}` per symbol) and record each trade of the `trade`
frames they get, as Finnhub sent it (`t` the send time, `v` the sequence).

Protocol with the controller: prints `ready` once every client is subscribed; on a
`stop` line on stdin prints one JSON report line and exits. Never logs anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.stuck import open_never_reading_client

HISTOGRAM_MS = 2000  # 1 ms buckets; the last one holds everything slower


def symbols_for(client_index: int, universe: list[str], per_client: int) -> list[str]:
    """Client i's symbols: every symbol, or `per_client` of them spread evenly."""
    if per_client <= 0 or per_client >= len(universe):
        return list(universe)
    start = client_index * per_client
    return [universe[(start + offset) % len(universe)] for offset in range(per_client)]


class Recorder:
    """Per-second delivery counts and latency histograms, shared by a process's clients."""

    def __init__(self) -> None:
        self.seconds: dict[int, list[Any]] = {}
        self.reordered = 0
        self.closed_by_server = 0

    def record(self, sent_ms: int, latency_ms: float) -> None:
        second = self.seconds.get(sent_ms // 1000)
        if second is None:
            second = self.seconds[sent_ms // 1000] = [0, [0] * (HISTOGRAM_MS + 1), 0.0]
        second[0] += 1
        bucket = int(latency_ms)
        second[1][min(max(bucket, 0), HISTOGRAM_MS)] += 1
        if latency_ms > second[2]:
            second[2] = latency_ms

    def received(self, message: dict[str, Any], now_ms: float, last: dict[str, float]) -> None:
        """A price_update or a price_updates batch: each update recorded, reordering counted."""
        updates = message["updates"] if message["type"] == "price_updates" else (message,)
        for update in updates:
            data = update["data"]
            self.trade(update["symbol"], data["timestamp"], data["volume"], now_ms, last)

    def trade(
        self, symbol: str, sent_ms: int, sequence: float, now_ms: float, last: dict[str, float]
    ) -> None:
        self.record(sent_ms, now_ms - sent_ms)
        if sequence <= last.get(symbol, 0):
            self.reordered += 1
        else:
            last[symbol] = sequence

    def report(self) -> dict[str, Any]:
        return {
            "seconds": {
                str(second): {
                    "count": count,
                    "histogram": {str(b): n for b, n in enumerate(histogram) if n},
                    "max_ms": maximum,
                }
                for second, (count, histogram, maximum) in self.seconds.items()
            },
            "reordered": self.reordered,
            "closed_by_server": self.closed_by_server,
        }


class LoadClient(WSListener):
    def __init__(
        self,
        recorder: Recorder,
        symbols: list[str],
        subscribed: asyncio.Event,
        bars: str = "",
        finnhub: bool = False,
    ) -> None:
        self._recorder = recorder
        self._symbols = symbols
        self._subscribed = subscribed
        self._bars = bars  # an interval: subscribe to bars instead of prices
        self._finnhub = finnhub  # Finnhub's own protocol, at `/`
        self._last_sequence: dict[str, float] = {}
        self._closing = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        if self._finnhub:  # Finnhub confirms nothing: subscribed once asked
            for symbol in self._symbols:
                message = {"type": "subscribe", "symbol": symbol}
                transport.send(WSMsgType.TEXT, orjson.dumps(message))
            self._subscribed.set()
            return
        request: dict[str, Any] = {"action": "subscribe", "symbols": self._symbols}
        if self._bars:
            request = {"action": "subscribe_bars", "symbols": self._symbols, "interval": self._bars}
        transport.send(WSMsgType.TEXT, orjson.dumps(request))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            if not self._closing:
                self._recorder.closed_by_server += 1
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now_ms = time.time() * 1000
        message = orjson.loads(frame.get_payload_as_memoryview())
        kind = message["type"]
        if kind in ("price_update", "price_updates"):
            self._recorder.received(message, now_ms, self._last_sequence)
        elif kind == "trade":
            for trade in message["data"]:
                self._recorder.trade(
                    trade["s"], trade["t"], trade["v"], now_ms, self._last_sequence
                )
        elif kind == "bar":
            self._recorder.record(int(now_ms), 0.0)  # frames counted by when they came
        elif kind == "subscription" or (self._bars and kind == "error"):
            self._subscribed.set()

    def stop(self) -> None:
        self._closing = True


async def connect_all(
    url: str,
    clients: int,
    first_index: int,
    universe: list[str],
    per_client: int,
    bars: str,
    finnhub: bool = False,
) -> tuple[Recorder, list[WSTransport], list[LoadClient]]:
    recorder = Recorder()
    transports: list[WSTransport] = []
    listeners: list[LoadClient] = []
    gate = asyncio.Semaphore(200)  # handshakes in flight at once

    async def one(index: int) -> None:
        subscribed = asyncio.Event()
        symbols = symbols_for(index, universe, per_client)
        listener = LoadClient(recorder, symbols, subscribed, bars, finnhub)
        async with gate:
            transport, _ = await ws_connect(lambda: listener, url, websocket_handshake_timeout=30)
            transports.append(transport)
            listeners.append(listener)
            async with asyncio.timeout(60):
                await subscribed.wait()

    await asyncio.gather(*(one(first_index + offset) for offset in range(clients)))
    return recorder, transports, listeners


async def stream_all(
    url: str, clients: int, first_index: int, universe: list[str], per_client: int
) -> tuple[Recorder, list[asyncio.Task[None]], aiohttp.ClientSession]:
    """SSE clients: `GET /stream?symbols=...` each, recording as the WebSocket ones do."""
    recorder = Recorder()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    base = url.replace("ws://", "http://").replace("/ws", "/stream")
    subscribed = [asyncio.Event() for _ in range(clients)]

    async def one(offset: int) -> None:
        symbols = ",".join(symbols_for(first_index + offset, universe, per_client))
        separator = "&" if "?" in base else "?"
        last: dict[str, float] = {}
        async with session.get(f"{base}{separator}symbols={symbols}") as response:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                message = orjson.loads(line[6:])
                kind = message["type"]
                if kind in ("price_update", "price_updates"):
                    recorder.received(message, time.time() * 1000, last)
                elif kind == "subscription":
                    subscribed[offset].set()

    tasks = [asyncio.create_task(one(offset)) for offset in range(clients)]
    async with asyncio.timeout(120):
        for event in subscribed:
            await event.wait()
    return recorder, tasks, session


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--symbols", required=True, help="comma-separated universe")
    parser.add_argument("--per-client", type=int, default=0, help="0: every symbol")
    parser.add_argument("--stuck", type=int, default=0, help="clients that never read")
    parser.add_argument("--query", default="", help="delivery options, e.g. batch_ms=50")
    parser.add_argument("--sse", action="store_true", help="GET /stream instead of /ws")
    parser.add_argument("--bars", default="", help="subscribe to bars in this interval")
    parser.add_argument("--finnhub", action="store_true", help="Finnhub's protocol, at /")
    args = parser.parse_args()
    universe = args.symbols.split(",")
    url = f"{args.url}?{args.query}" if args.query else args.url

    streams: list[asyncio.Task[None]] = []
    session: aiohttp.ClientSession | None = None
    if args.sse:
        recorder, streams, session = await stream_all(
            url, args.clients, args.first_index, universe, args.per_client
        )
        transports: list[WSTransport] = []
        listeners: list[LoadClient] = []
    else:
        recorder, transports, listeners = await connect_all(
            url, args.clients, args.first_index, universe, args.per_client, args.bars,
            args.finnhub,
        )  # fmt: skip
    parts = urlsplit(args.url)
    subscribe_all = orjson.dumps({"action": "subscribe", "symbols": universe}).decode()
    stuck = [
        await open_never_reading_client(
            parts.hostname or "127.0.0.1", parts.port or 80, subscribe_all
        )
        for _ in range(args.stuck)
    ]
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the controller's "stop"
    for listener in listeners:
        listener.stop()
    report = recorder.report()
    report["clients"] = len(transports) + len(streams)
    report["stuck"] = len(stuck)
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()
    for transport in transports:
        transport.disconnect()
    for task in streams:
        task.cancel()
    if streams:
        await asyncio.wait(streams)
    if session is not None:
        await session.close()
    for sock in stuck:
        sock.close()


if __name__ == "__main__":
    asyncio.run(main())
