"""The REST mirror: `GET /api/v1/<path>` answering as Finnhub's REST API does, so apps
and scripts written against Finnhub change only their base URL (Finnhub's Python client
builds `API_URL + "/" + "/quote"`: the doubled slash is accepted).

- `quote`: from the gateway's quotes (market_data/quotes.py: one upstream call serves
  this, `quote` messages and `/quote/{symbol}`), in Finnhub's shape; a symbol Finnhub
  has no quote for gets its all-zeros answer.
- `stock/market-status` of `MARKET_EXCHANGE`: what the market watch polls (forwarded,
  once, only until it has polled); another exchange is like any other path.
- `stock/candle`: the gateway's own bars (bars/book.py), never forwarded, for the
  resolutions it builds (`RESOLUTIONS`), `from`/`to` in seconds, Finnhub's shape (`t` in
  seconds, the open candle last, `{"s":"no_data"}` when there is none).
- anything else: forwarded by market_data/rest_mirror.py if `FINNHUB_REST_ALLOW` lists
  it (cached, coalesced, within quotas), else 403; never forwarded otherwise.

With a gateway credential configured (`GATEWAY_TOKEN` or signed tokens) a request needs
it, as Finnhub's clients send their key (`token` query, or `X-Finnhub-Token`): 401
otherwise. Credential parameters (`token` in any spelling, `apikey`, ...) are dropped
whatever their case: never forwarded, never in the cache key; no client header is
forwarded. The `symbol` parameter (one, in any case) is held to the token's
entitlements (403), and a token with restricted entitlements may not name a security
another way (`isin`, `cusip`: 403). Refusals are in Finnhub's shape, `{"error": "..."}`,
with `Retry-After` where waiting helps. Nothing here logs or answers the key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from stock_gateway import client_requests, protocol
from stock_gateway.access.admission import Admitted
from stock_gateway.access.credentials import address_key
from stock_gateway.access.refusal import Refusal
from stock_gateway.bars.book import Interval
from stock_gateway.bars.store import MAX_READ
from stock_gateway.delivery.bar_history import candles
from stock_gateway.endpoints.running_app import RunningApp
from stock_gateway.market_data.model import MarketStatus, Quote
from stock_gateway.market_data.quotes import QuoteUnavailable
from stock_gateway.market_data.rest_mirror import MirrorRefused, without_credentials
from stock_gateway.settings import Settings

# Finnhub's candle resolutions the gateway builds bars for: one table, so a new
# interval of bars/book.py is one more row here.
# Finnhub's candle resolutions the gateway builds bars for (bars/intervals.py).
RESOLUTIONS: dict[str, Interval] = {
    "1": "1m",
    "5": "5m",
    "15": "15m",
    "30": "30m",
    "60": "1h",
    "D": "1d",
}
UNKNOWN_QUOTE = {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}
TIMEZONES = {"US": "America/New_York"}  # Finnhub's `timezone` of market statuses we follow
NO_REST = "The gateway makes no calls to Finnhub's REST API (REST_ENABLED=false)."
# Parameters naming a security other than by symbol (Finnhub's `isin`, `cusip`, ...):
# a client with restricted entitlements may not use them, as they cannot be checked.
OTHER_IDENTIFIERS = frozenset({"isin", "cusip", "figi", "sedol"})


def finnhub_json(body: Any, status: int = 200, retry_after: int = 0) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def refused(message: str, status: int, retry_after: int = 0) -> Response:
    return finnhub_json({"error": message}, status, retry_after)


def quote_shape(quote: Quote | None) -> dict[str, Any]:
    if quote is None:
        return dict(UNKNOWN_QUOTE)
    return {
        "c": quote.price,
        "d": quote.change,
        "dp": quote.change_percent,
        "h": quote.high,
        "l": quote.low,
        "o": quote.open,
        "pc": quote.previous_close,
        "t": quote.timestamp // 1000,
    }


def market_status_shape(status: MarketStatus) -> dict[str, Any]:
    return {
        "exchange": status.exchange,
        "holiday": status.holiday,
        "isOpen": status.is_open,
        "session": None if status.session == "closed" else status.session,
        "timezone": TIMEZONES.get(status.exchange.upper()),
        "t": int(time.time()),
    }


def _seconds(raw: str | None) -> int | None:
    """A `from`/`to` parameter: whole Unix seconds; ValueError for anything else."""
    return None if raw is None or raw == "" else int(raw)


class FinnhubRestApi:
    def __init__(self, settings: Settings, running: Callable[[], RunningApp]) -> None:
        self._settings = settings
        self._running = running

    async def serve(self, request: Request) -> Response:
        running = self._running()
        path = request.path_params["path"].strip("/")
        # Only the query's parameters go on, never a credential (the client's key,
        # perhaps), whatever its spelling: not forwarded, not in the cache key.
        params = without_credentials(request.query_params.multi_items())
        given = [v for k, v in params if k.casefold() == "symbol"]
        if len(given) > 1:  # which one would Finnhub read? Entitlements must see that one.
            return self._refuse("bad_request", "Give one symbol.", 422)
        raw_symbol = given[0] if given else None
        symbol = client_requests.normalize_symbol(raw_symbol) if raw_symbol is not None else None
        asker = await self._admit(request, symbol)
        if isinstance(asker, Response):
            return asker
        if raw_symbol is not None:
            if symbol is None:
                return self._refuse("bad_request", f"Invalid symbol: {protocol.SYMBOL_RULE}.", 422)
            params = [("symbol", symbol) if k.casefold() == "symbol" else (k, v) for k, v in params]
        if asker.entitlements.symbols is not None and any(
            k.casefold() in OTHER_IDENTIFIERS for k, _ in params
        ):
            # An ISIN or CUSIP names a security the entitlements cannot check.
            message = "Your token's entitlements allow lookups by symbol only."
            return self._refuse("forbidden_symbol", message, 403)
        if path == "stock/candle":
            return await self._candles(symbol, dict(params), asker)
        if not self._settings.rest_enabled:
            return self._refuse("unavailable", NO_REST, 503)
        if path == "quote":
            return await self._quote(symbol, asker)
        unlisted = False
        exchange = dict(params).get("exchange", "")
        if path == "stock/market-status" and exchange.upper() == self._settings.market_exchange:
            status = running.hub.market_status
            if status is not None:
                return finnhub_json(market_status_shape(status))
            unlisted = True  # not polled yet: this once, as the market watch would
        try:
            owners = (asker.owner, asker.address)
            answer = await running.mirror.get(path, params, owners, unlisted=unlisted)
        except MirrorRefused as refusal:
            return self._refuse(refusal.reason, str(refusal), refusal.status, refusal.retry_after)
        return Response(answer.body, answer.status, media_type="application/json")

    async def _admit(self, request: Request, symbol: str | None) -> Admitted | Response:
        running, settings = self._running(), self._settings
        credential = settings.gateway_token or running.admission.verifies_tokens
        token = None
        if credential:  # as Finnhub's clients send their key
            token = request.query_params.get("token") or request.headers.get("x-finnhub-token")
        admitted = await running.admission.admit(
            "request",
            address=address_key(request.client.host if request.client else "-"),
            token=token,
            symbol=symbol,
        )
        if isinstance(admitted, Refusal):
            reason = "forbidden_symbol" if admitted.status == 403 else "auth"
            return self._refuse(reason, admitted.reason, admitted.status, admitted.retry_after or 0)
        return admitted

    async def _quote(self, symbol: str | None, asker: Admitted) -> Response:
        hub = self._running().hub
        if symbol is None:
            return self._refuse("bad_request", "Give a symbol.", 422)
        if hub.quotes is None:
            return self._refuse("unavailable", NO_REST, 503)
        owners = (asker.owner, asker.address)  # a user's share, and its address's
        try:
            quote = await hub.quotes.get(symbol, owners, lookup=symbol not in hub.interest)
        except QuoteUnavailable as exc:
            reason = "quota" if exc.share_spent else "budget"
            message = "API limit reached. Please try again later."
            return self._refuse(reason, message, 429, max(1, math.ceil(exc.retry_after)))
        return finnhub_json(quote_shape(quote))

    async def _candles(
        self, symbol: str | None, params: dict[str, str], asker: Admitted
    ) -> Response:
        """The gateway's bars at a Finnhub resolution, stored and held (like GET /bars),
        `from` <= t <= `to` as Finnhub counts them, charged as GET /bars is."""
        interval = RESOLUTIONS.get(params.get("resolution", ""))
        if interval is None:
            supported = ", ".join(RESOLUTIONS)
            message = f"Unsupported resolution: the gateway builds candles of {supported}."
            return self._refuse("bad_request", message, 422)
        if symbol is None:
            return self._refuse("bad_request", "Give a symbol.", 422)
        try:
            start, end = _seconds(params.get("from")), _seconds(params.get("to"))
        except ValueError:
            return self._refuse("bad_request", "from and to are Unix seconds.", 422)
        bars = self._running().hub.bars
        if bars is None:
            return finnhub_json({"s": "no_data"})
        start_ms = 0 if start is None else min(2**40, max(0, start)) * 1000
        end_ms = 2**50 if end is None else min(2**40, max(0, end + 1)) * 1000
        answer = await bars.read(
            asker.owner,
            (symbol, interval, start_ms, max(start_ms, end_ms), MAX_READ),
            lambda found: orjson.dumps(candles(found) if found else {"s": "no_data"}),
        )
        if isinstance(answer, Refusal):
            return self._refuse("history_bytes", answer.reason, 429, answer.retry_after or 1)
        return Response(answer, media_type="application/json")

    def _refuse(self, reason: str, message: str, status: int, retry_after: int = 0) -> Response:
        self._running().mirror.count_refusal(reason)
        return refused(message, status, retry_after)
