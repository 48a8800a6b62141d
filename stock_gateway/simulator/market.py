"""A Finnhub-compatible market simulator: the upstream for demo mode, tests and benchmarks.

It speaks Finnhub's real WebSocket wire protocol over a real socket (aiohttp.web), and
its REST API too (`/api/v1/quote`, `/api/v1/stock/market-status`: simulator/rest.py):
the handshake needs a `token` query parameter (401 without it, or with the wrong one
when a token is configured), clients send `{"type":"subscribe","symbol":...}` and
`unsubscribe`, and receive `{"type":"trade","data":[...]}` batches for their
subscribed symbols only (a random walk with plausible prices, volumes and millisecond
timestamps), `{"type":"ping"}` now and then, and `{"type":"error","msg":...}` past the
symbol cap, as Finnhub's free plan does.

It plays the market's hours: a `session` (closed, pre-market, regular, post-market;
`--session`, `POST /session?value=...`, or the attribute in tests) under which, when
closed, stock symbols get no trades, only pings, while crypto (`BINANCE:*`) and forex
(anything with a `:`) keep trading, as the real feed does at weekends.

Tests drive it too: it records every message received, and can send any frame or drop
every connection on command.

In benchmark mode (`sequenced=True`) symbols trade round-robin and each trade's
volume is its per-symbol sequence number, so load clients can count what they missed;
`GET /stats` reports what was sent per second, `POST /rate?value=N` changes the rate and
`POST /drop` closes every gateway's socket (a Finnhub restart).

With `skew="zipf"` (`--skew zipf --universe A,B,...`) the whole market trades, subscribed
or not, each symbol at its Zipf rate (simulator/skew.py), and each gateway gets the
trades of the symbols it carries; `GET /history` has every trade, for benchmarks.

Run standalone: `python -m stock_gateway.simulator --port 8765 --rate 50`.
This module must never log the token it is given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from stock_gateway.market_data.model import Session
from stock_gateway.simulator.controls import add_control_routes
from stock_gateway.simulator.prices import reference_price
from stock_gateway.simulator.rest import REST_PREFIX, QuoteBook, RestCalls, add_rest_routes
from stock_gateway.simulator.skew import SkewedMarket
from stock_gateway.simulator.skewed_trading import add_skewed_trading, open_symbol

logger = logging.getLogger(__name__)

MESSAGE_INTERVAL_SECONDS = 0.05
MAX_TRADES_PER_SYMBOL_PER_FRAME = 4


@dataclass
class UpstreamConnection:
    """One gateway connected to the simulator."""

    ws: web.WebSocketResponse
    symbols: list[str] = field(default_factory=list)  # in subscription order


class MarketSimulator:
    """The simulated Finnhub: an aiohttp application plus controls for tests."""

    def __init__(
        self,
        *,
        rate: float = 20.0,
        ping_interval: float = 60.0,
        token: str | None = None,
        max_symbols: int = 50,
        seed: int | None = None,
        tick: float = MESSAGE_INTERVAL_SECONDS,
        sequenced: bool = False,
        session: Session = "regular",
        rest_rate: float = 60.0,
        rest_window: float = 60.0,
        skew: str = "none",
        universe: tuple[str, ...] = (),
        zipf_exponent: float = 1.0,
    ) -> None:
        self.rate = rate  # trades per second over all subscribed symbols, per connection
        self.ping_interval = ping_interval
        self.token = token
        self.max_symbols = max_symbols  # on one socket, as Finnhub's free plan
        self.refused_over_cap = 0  # subscribes refused for it: never carried
        self.max_carried = 0  # the most symbols one socket carried at once
        self.received: list[dict[str, object]] = []
        self.connections: list[UpstreamConnection] = []
        self.connection_count = 0
        self.trades_sent = 0
        self.pings_sent = 0
        self.changed = asyncio.Condition()
        self.tick = tick
        self.sequenced = sequenced
        self.sequences: dict[str, int] = {}  # sequenced mode: last sequence sent per symbol
        self.sent_per_second: dict[int, dict[str, int]] = {}  # sequenced mode
        self.session: Session = session
        self.rest_rate = rest_rate  # REST calls per window before 429, as Finnhub's free plan
        self.rest_calls = RestCalls(window=rest_window)
        self._next_symbol = 0
        self._random = random.Random(seed)
        self.prices: dict[str, float] = {}
        self.book = QuoteBook(self.prices)  # what /quote answers: the day so far
        self.skewed = (
            SkewedMarket(universe, zipf_exponent, self._random) if skew == "zipf" else None
        )

    @property
    def rest_window(self) -> float:
        """Seconds `rest_rate` counts over (60, as Finnhub); kept where the calls are."""
        return self.rest_calls.window

    @rest_window.setter
    def rest_window(self, seconds: float) -> None:
        self.rest_calls.window = seconds

    def make_app(self) -> web.Application:
        """A fresh aiohttp application over this simulator's state (one per serve)."""
        app = web.Application()
        app.router.add_get("/", self._handle)
        add_control_routes(app, self)
        add_rest_routes(app, self)
        if self.skewed is not None:
            add_skewed_trading(app, self)

        async def close_sockets(app: web.Application) -> None:
            # Without this, shutting down waits for every gateway to hang up first.
            await self.drop_connections()

        app.on_shutdown.append(close_sockets)
        return app

    # -- controls for tests and benchmarks ---------------------------------------------------

    async def wait_for(self, predicate: object, timeout: float = 5.0) -> None:
        """Wait until `predicate()` is true; it is re-checked whenever the simulator changes."""
        assert callable(predicate)
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(predicate)

    def subscribed_symbols(self) -> set[str]:
        return {symbol for connection in self.connections for symbol in connection.symbols}

    def received_of(self, kind: str, symbol: str | None = None) -> list[dict[str, object]]:
        return [
            message
            for message in self.received
            if message.get("type") == kind and (symbol is None or message.get("symbol") == symbol)
        ]

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame, as-is, to every connected gateway."""
        for connection in list(self.connections):
            with suppress(ConnectionError):
                if isinstance(frame, bytes):
                    await connection.ws.send_bytes(frame)
                else:
                    await connection.ws.send_str(frame)

    async def send_trades(self, trades: list[dict[str, object]]) -> None:
        await self.send_raw(orjson.dumps({"type": "trade", "data": trades}).decode())

    async def drop_connections(self) -> None:
        """Close every gateway's socket, as Finnhub does when it restarts a server."""
        for connection in list(self.connections):
            await connection.ws.close(code=1001, message=b"server restart")

    # -- the protocol ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        if not token or (self.token is not None and token != self.token):
            # Finnhub answers a bad or missing key with a plain 401 before the upgrade.
            return web.json_response({"error": "Invalid API key."}, status=401)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = UpstreamConnection(ws)
        self.connections.append(connection)
        self.connection_count += 1
        await self.notify()
        emitter = asyncio.create_task(self._emit_forever(connection))
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._handle_text(connection, message.data)
        finally:
            emitter.cancel()
            with suppress(asyncio.CancelledError):
                await emitter
            self.connections.remove(connection)
            await self.notify()
        return ws

    async def _handle_text(self, connection: UpstreamConnection, data: str) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            await connection.ws.send_str('{"type":"error","msg":"Invalid JSON"}')
            return
        if not isinstance(message, dict):
            return
        self.received.append(message)
        kind, symbol = message.get("type"), message.get("symbol")
        if isinstance(symbol, str):
            if kind == "subscribe" and symbol not in connection.symbols:
                if len(connection.symbols) >= self.max_symbols:
                    self.refused_over_cap += 1
                    await connection.ws.send_str(
                        '{"type":"error","msg":"Subscribing to too many symbols"}'
                    )
                else:
                    connection.symbols.append(symbol)
                    if self.skewed is not None and self.skewed.join(symbol):
                        open_symbol(self, symbol)
                    self.max_carried = max(self.max_carried, len(connection.symbols))
            elif kind == "unsubscribe" and symbol in connection.symbols:
                connection.symbols.remove(symbol)
        await self.notify()

    async def notify(self) -> None:
        """Wake whoever waits in `wait_for` to re-check its condition."""
        async with self.changed:
            self.changed.notify_all()

    async def _emit_forever(self, connection: UpstreamConnection) -> None:
        next_ping = time.monotonic() + self.ping_interval
        owed = 0.0  # fractional trades carried between ticks, so low rates still trade
        while not connection.ws.closed:
            await asyncio.sleep(self.tick)
            if time.monotonic() >= next_ping:
                next_ping += self.ping_interval
                await connection.ws.send_str('{"type":"ping"}')
                self.pings_sent += 1
                await self.notify()
            if self.skewed is not None:
                continue  # the market's own task trades (_trade_market_forever)
            owed += self.rate * self.tick
            count = int(owed)
            trading = self.trading(connection.symbols)
            if count and trading:
                owed -= count
                await connection.ws.send_str(self._trade_frame(trading, count))
            elif not trading:
                owed = 0.0

    def trading(self, symbols: list[str]) -> list[str]:
        """The symbols that trade now: outside market hours only crypto and forex."""
        if self.session == "closed":
            return [symbol for symbol in symbols if ":" in symbol]
        return symbols

    def _trade_frame(self, symbols: list[str], count: int) -> str:
        now_ms = int(time.time() * 1000)  # the send time: benchmarks measure latency from it
        if self.sequenced:
            data = [self._sequenced_trade(symbols, now_ms) for _ in range(count)]
        else:
            count = min(count, len(symbols) * MAX_TRADES_PER_SYMBOL_PER_FRAME)
            data = [self.next_trade(self._random.choice(symbols), now_ms) for _ in range(count)]
        self.trades_sent += len(data)
        return orjson.dumps({"type": "trade", "data": data}).decode()

    def _sequenced_trade(self, symbols: list[str], now_ms: int) -> dict[str, object]:
        symbol = symbols[self._next_symbol % len(symbols)]
        self._next_symbol += 1
        sequence = self.sequences[symbol] = self.sequences.get(symbol, 0) + 1
        second = self.sent_per_second.setdefault(now_ms // 1000, {})
        second[symbol] = second.get(symbol, 0) + 1
        trade = self.next_trade(symbol, now_ms)
        trade["v"] = sequence
        return trade

    def next_trade(self, symbol: str, now_ms: int) -> dict[str, object]:
        price = self.prices.get(symbol) or reference_price(symbol)
        price = max(0.01, price * (1 + self._random.gauss(0, 0.0005)))
        self.prices[symbol] = price
        self.book.traded(symbol, price, now_ms)
        decimals = 5 if price < 10 else 2
        volume: float
        if ":" in symbol:  # crypto and forex trade fractional sizes
            volume = round(self._random.expovariate(20), 6)
        else:
            volume = self._random.choice((1, 5, 10, 25, 50, 100, 100, 200, 500))
        trade: dict[str, object] = {
            "s": symbol,
            "p": round(price, decimals),
            "t": now_ms,
            "v": volume,
        }
        if ":" not in symbol:
            trade["c"] = self._random.choice((["1"], ["1", "12"], []))
        return trade


@asynccontextmanager
async def serve(
    simulator: MarketSimulator, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve the simulator for the length of the block; yields its ws:// URL."""
    # No access log: it would print every gateway's token.
    runner = web.AppRunner(simulator.make_app(), access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        yield f"ws://{host}:{bound_port}/"  # its REST API: rest_url() of this
    finally:
        await runner.cleanup()


def rest_url(ws_url: str) -> str:
    """The REST base URL (FINNHUB_REST_URL) of a simulator served at `ws_url`."""
    return ws_url.replace("ws://", "http://", 1).rstrip("/") + REST_PREFIX
