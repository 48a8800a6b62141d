"""A bare picows fan-out server: the practical ceiling of one CPython process that writes
one WebSocket frame per trade to each subscriber, for side-by-side comparisons with the
gateway (BENCHMARKS.md). Not a product: no limits, no outbox, no ASGI.

    python -m bench.reference_server --port 8001 --upstream ws://127.0.0.1:8765/

It speaks just enough of the gateway's protocol for bench/load.py: `subscribe` is
confirmed with `subscription`, then every trade of a subscribed symbol is one
`price_update` frame, encoded once and sent to each subscriber. It follows the union
of its clients' symbols upstream, like the gateway. Prints `ready` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

subscribers: dict[str, set[WSTransport]] = {}
wanted: asyncio.Queue[str] = asyncio.Queue()


class Client(WSListener):
    def __init__(self) -> None:
        self.symbols: set[str] = set()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        message = orjson.loads(frame.get_payload_as_bytes())
        if message.get("action") == "subscribe":
            for symbol in message["symbols"]:
                if symbol not in subscribers:
                    subscribers[symbol] = set()
                    wanted.put_nowait(symbol)
                subscribers[symbol].add(transport)
                self.symbols.add(symbol)
            reply = {"type": "subscription", "status": "subscribed", "symbols": message["symbols"]}
            transport.send(WSMsgType.TEXT, orjson.dumps(reply))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for symbol in self.symbols:
            subscribers.get(symbol, set()).discard(transport)


async def follow_upstream(url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, params={"token": "x"}) as ws,
    ):

        async def subscribe() -> None:
            while True:
                symbol = await wanted.get()
                await ws.send_str(orjson.dumps({"type": "subscribe", "symbol": symbol}).decode())

        subscribing = asyncio.create_task(subscribe())
        try:
            async for message in ws:
                body = orjson.loads(message.data)
                if body.get("type") != "trade":
                    continue
                for trade in body["data"]:
                    symbol = trade["s"]
                    payload = orjson.dumps(
                        {
                            "type": "price_update",
                            "symbol": symbol,
                            "data": {
                                "price": trade["p"],
                                "volume": trade["v"],
                                "timestamp": trade["t"],
                            },
                        }
                    )
                    for transport in subscribers.get(symbol, ()):
                        transport.send(WSMsgType.TEXT, payload)  # one frame, one write each
        finally:
            subscribing.cancel()
            await asyncio.wait([subscribing])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    server = await ws_create_server(lambda request: Client(), args.host, args.port)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await follow_upstream(args.upstream)


if __name__ == "__main__":
    asyncio.run(main())
