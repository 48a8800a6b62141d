"""The simulator's REST side, as Finnhub serves it: `GET /api/v1/quote`,
`GET /api/v1/stock/market-status` and the reference data of simulator/reference_data.py
(profiles, metrics, news, earnings, ...), over real HTTP with Finnhub's shapes; any
other path under `/api/v1` gets Finnhub's 403 for a resource the plan does not include.

The key comes in the `X-Finnhub-Token` header (or a `token` query parameter); a
missing or wrong one gets 401 `{"error":"Invalid API key."}`. Past `rest_rate` calls in
any `rest_window` seconds (60, as Finnhub; tests shorten it) the answer is 429 with
`Retry-After`. A symbol the simulator does not
know gets all zeros, as Finnhub answers an unknown symbol; it knows its reference
symbols (simulator/prices.py) and those it has traded (any symbol a gateway subscribes
while it trades). Quotes agree with the trade stream: the day opens at the price the
random walk starts from, `c` is the last traded price (low <= open, close <= high), `t`
the last trade's time or now (seconds), `pc` a fixed previous close per symbol and
simulated (UTC) day (or the one a test scripts: `QuoteBook.previous_closes`), `d`/`dp`
the change against it.
Every call is recorded (`rest_calls`) so tests can count them per window, and what it
carried (its query string and headers) so they can see where the key went.
This module never logs the key.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from aiohttp import web

from stock_gateway.market_data.model import Session
from stock_gateway.simulator.prices import REFERENCE_PRICES, reference_price
from stock_gateway.simulator.reference_data import ENDPOINTS, Query

REST_PREFIX = "/api/v1"
Handler = Callable[[web.Request], Awaitable[web.Response]]


class Carried(NamedTuple):
    """What one call carried: its path, query string and headers."""

    path: str
    query: str
    headers: dict[str, str]


@dataclass
class RestCalls:
    """What the REST side was asked, for tests: (monotonic time, path, symbol, status)."""

    log: list[tuple[float, str, str, int]] = field(default_factory=list)
    tokens_in_urls: int = 0  # calls that carried the key in the query string
    carried: list[Carried] = field(default_factory=list)
    window: float = 60.0  # seconds: the span of the plan's rate (the simulator's rest_window)

    def max_in_any_window(self, seconds: float | None = None) -> int:
        """The most calls in any `seconds` (the plan's window unless given)."""
        seconds = self.window if seconds is None else seconds
        times = sorted(at for at, *_ in self.log)
        most, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def by_path(self) -> dict[str, dict[str, int]]:
        """Calls per path, per status."""
        counts: dict[str, dict[str, int]] = {}
        for _, path, _, status in self.log:
            per_status = counts.setdefault(path, {})
            per_status[str(status)] = per_status.get(str(status), 0) + 1
        return counts

    def of(self, path: str, symbol: str | None = None) -> int:
        return sum(1 for _, p, s, _ in self.log if p == path and (symbol is None or s == symbol))


def previous_close(symbol: str, reference: float) -> float:
    """A fixed close for the previous simulated day: within ±2% of the reference price."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    swing = (zlib.crc32(f"{symbol}:{day}".encode()) % 401 - 200) / 10_000
    return round(reference * (1 + swing), 5 if reference < 10 else 2)


class QuoteBook:
    """The simulated day per symbol (open, high, low, last trade time), for `/quote`."""

    def __init__(self, prices: dict[str, float]) -> None:
        self._prices = prices  # the simulator's last price per symbol, shared
        self._days: dict[str, tuple[float, float, float, int]] = {}
        # Scripted by tests: a new day's previous close for a symbol, from now on.
        self.previous_closes: dict[str, float] = {}

    def traded(self, symbol: str, price: float, at_ms: int) -> None:
        start = reference_price(symbol)  # where the walk starts: the day's open
        day_open, high, low, _ = self._days.get(symbol, (start, start, start, 0))
        self._days[symbol] = (day_open, max(high, price), min(low, price), at_ms)

    def quote_of(self, symbol: str) -> dict[str, float | int | None]:
        """Finnhub's `/quote`: zeros unless the symbol is known (a reference price, or it
        has traded), else consistent with the trade stream."""
        if symbol not in REFERENCE_PRICES and symbol not in self._prices:
            return {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}
        reference = reference_price(symbol)
        close = self.previous_closes.get(symbol) or previous_close(symbol, reference)
        last = self._prices.get(symbol, reference)
        day_open, high, low, last_ms = self._days.get(symbol, (reference, reference, reference, 0))
        decimals = 5 if last < 10 else 2
        traded = round(last, decimals)  # the price the last trade carried
        return {
            "c": traded,
            "d": round(traded - close, 4),  # the change of the price shown, as Finnhub's
            "dp": round((traded - close) / close * 100, 4),
            "h": round(max(high, last), decimals),
            "l": round(min(low, last), decimals),
            "o": round(day_open, decimals),
            "pc": close,
            "t": (last_ms // 1000) or int(time.time()),
        }


class Market(Protocol):
    """What the REST side reads of the simulated market (simulator/market.py)."""

    book: QuoteBook
    rate: float
    session: Session
    rest_calls: RestCalls  # its `window` is the plan's: `rest_rate` calls in it
    token: str | None
    rest_rate: float

    async def notify(self) -> None: ...


def add_rest_routes(app: web.Application, market: Market) -> None:
    async def quote(request: web.Request) -> web.Response:
        refusal = _refusal(request, market)
        if refusal is not None:
            return refusal
        symbol = request.query.get("symbol", "").strip().upper()
        _record(market, request, symbol, 200)
        await market.notify()
        return web.json_response(market.book.quote_of(symbol))

    async def market_status(request: web.Request) -> web.Response:
        refusal = _refusal(request, market)
        if refusal is not None:
            return refusal
        _record(market, request, "", 200)
        await market.notify()
        session = market.session
        body: dict[str, Any] = {
            "exchange": request.query.get("exchange", "US"),
            "holiday": None,
            "isOpen": session == "regular",
            "session": None if session == "closed" else session,
            "timezone": "America/New_York",
            "t": int(time.time()),
        }
        return web.json_response(body)

    def reference(answer: Callable[[Query], Any]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            refusal = _refusal(request, market)
            if refusal is not None:
                return refusal
            _record(market, request, request.query.get("symbol", ""), 200)
            await market.notify()
            return web.json_response(answer(request.query))

        return handle

    async def not_in_plan(request: web.Request) -> web.Response:
        refusal = _refusal(request, market)
        if refusal is not None:
            return refusal
        _record(market, request, request.query.get("symbol", ""), 403)
        await market.notify()
        return web.json_response({"error": "You don't have access to this resource."}, status=403)

    app.router.add_get(f"{REST_PREFIX}/quote", quote)
    app.router.add_get(f"{REST_PREFIX}/stock/market-status", market_status)
    for path, answer in ENDPOINTS.items():
        app.router.add_get(f"{REST_PREFIX}/{path}", reference(answer))
    app.router.add_get(REST_PREFIX + "/{path:.*}", not_in_plan)  # last: anything else


def _refusal(request: web.Request, market: Market) -> web.Response | None:
    market.rest_calls.tokens_in_urls += "token" in request.query
    carried = Carried(request.path, request.query_string, dict(request.headers))
    market.rest_calls.carried.append(carried)
    token = request.headers.get("X-Finnhub-Token") or request.query.get("token", "")
    if not token or (market.token is not None and token != market.token):
        _record(market, request, request.query.get("symbol", ""), 401)
        return web.json_response({"error": "Invalid API key."}, status=401)
    now, window = time.monotonic(), market.rest_calls.window
    calls = market.rest_calls.log
    recent = [at for at, _, _, status in calls if at > now - window and status == 200]
    if len(recent) >= market.rest_rate:
        _record(market, request, request.query.get("symbol", ""), 429)
        retry = max(1, int(recent[0] + window - now) + 1)
        return web.json_response(
            {"error": "API limit reached. Please try again later."},
            status=429,
            headers={"Retry-After": str(retry)},
        )
    return None


def _record(market: Market, request: web.Request, symbol: str, status: int) -> None:
    path = request.path.removeprefix(REST_PREFIX)
    market.rest_calls.log.append((time.monotonic(), path, symbol.upper(), status))
