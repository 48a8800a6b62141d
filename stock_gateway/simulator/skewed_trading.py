"""The simulator's skewed market running (`--skew zipf`): one task, owned by the aiohttp
application (started and cancelled with it), trades every symbol at its rate
(simulator/skew.py) and sends each gateway the trades of the symbols it carries;
`GET /history` answers every trade so far, per symbol, as [Unix ms, price].
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Protocol

import orjson
from aiohttp import web

from stock_gateway.simulator.prices import reference_price
from stock_gateway.simulator.rest import QuoteBook
from stock_gateway.simulator.skew import SkewedMarket


class Carrying(Protocol):
    """One gateway's socket (simulator/market.py's UpstreamConnection)."""

    @property
    def ws(self) -> web.WebSocketResponse: ...

    @property
    def symbols(self) -> list[str]: ...


class MarketSimulator(Protocol):
    """What this module uses of simulator/market.py's MarketSimulator."""

    skewed: SkewedMarket | None
    rate: float
    tick: float
    prices: dict[str, float]
    book: QuoteBook
    trades_sent: int

    @property
    def connections(self) -> Sequence[Carrying]: ...

    def trading(self, symbols: list[str]) -> list[str]: ...

    def next_trade(self, symbol: str, now_ms: int) -> dict[str, object]: ...

    async def notify(self) -> None: ...


def add_skewed_trading(app: web.Application, simulator: MarketSimulator) -> None:
    async def market_running(app: web.Application) -> AsyncIterator[None]:
        market = asyncio.create_task(trade_market_forever(simulator), name="skewed-market")
        yield
        market.cancel()
        with suppress(asyncio.CancelledError):
            await market

    async def history(request: web.Request) -> web.Response:
        assert simulator.skewed is not None
        return web.json_response(
            {"rate": simulator.rate, "history": simulator.skewed.history},
            dumps=lambda value: orjson.dumps(value).decode(),
        )

    app.router.add_get("/history", history)
    app.cleanup_ctx.append(market_running)


async def trade_market_forever(simulator: MarketSimulator) -> None:
    skewed = simulator.skewed
    assert skewed is not None
    while True:
        for symbol in skewed.opening():
            open_symbol(simulator, symbol)
        now_ms = int(time.time() * 1000)
        drawn = skewed.draw(simulator.rate, simulator.tick)
        trades = [simulator.next_trade(symbol, now_ms) for symbol in simulator.trading(drawn)]
        for trade in trades:
            price = trade["p"]
            assert isinstance(price, float)
            skewed.traded(str(trade["s"]), now_ms, price)
        for connection in list(simulator.connections):
            carried = set(connection.symbols)
            data = [trade for trade in trades if trade["s"] in carried]
            if data and not connection.ws.closed:
                simulator.trades_sent += len(data)
                with suppress(ConnectionError):
                    frame = orjson.dumps({"type": "trade", "data": data}).decode()
                    await connection.ws.send_str(frame)
        if trades:
            await simulator.notify()  # tests wait on the history
        await asyncio.sleep(simulator.tick)


def open_symbol(simulator: MarketSimulator, symbol: str) -> None:
    """A skewed market's symbol opens with a trade at the walk's starting price."""
    assert simulator.skewed is not None
    now_ms, start = int(time.time() * 1000), reference_price(symbol)
    price = simulator.prices.setdefault(symbol, start)
    simulator.book.traded(symbol, price, now_ms)
    simulator.skewed.traded(symbol, now_ms, round(price, 5 if price < 10 else 2))
