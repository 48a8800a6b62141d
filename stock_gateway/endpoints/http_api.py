"""The HTTP endpoints: `/`, `/health`, `/metrics`, `/docs`, `/asyncapi.yaml`, `/demo`,
`/favicon.ico` and `GET /quote/{symbol}`.

They read what the lifespan built (`RunningApp`) and never change it, except that a
quote asked for here is fetched (within the REST budget, a share of it per user and per
address, and for a symbol nobody subscribes to, the one-off lookups' share).
Nothing here may expose the Finnhub key or a client token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from stock_gateway import client_requests, protocol
from stock_gateway.access.admission import Admitted
from stock_gateway.access.credentials import address_key, request_token
from stock_gateway.access.refusal import Refusal
from stock_gateway.bars.book import INTERVALS
from stock_gateway.bars.store import MAX_READ
from stock_gateway.delivery.bar_history import candles
from stock_gateway.endpoints import docs
from stock_gateway.endpoints.running_app import RunningApp
from stock_gateway.market_data.quotes import QuoteUnavailable
from stock_gateway.settings import Settings

STATIC = Path(__file__).resolve().parent.parent / "static"


class HttpApi:
    def __init__(
        self,
        settings: Settings,
        running: Callable[[], RunningApp],
        registry: CollectorRegistry,
        docs_page: str,
    ) -> None:
        self._settings = settings
        self._running = running
        self._registry = registry
        self._docs_page = docs_page

    async def root(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "service": "stock-price-gateway",
                "websocket": "/ws",
                "finnhub_websocket": "/",
                "finnhub_rest": "/api/v1",
                "health": "/health",
                "docs": "/docs",
                "demo": "/demo",
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        """Counters kept as things change, never a look at each client: its cost does
        not grow with the clients, which is why it is not paced (endpoints/request_rate.py)."""
        running = self._running()
        hub, counters = running.hub, running.upstream.counters
        down = running.supervisor.down
        market = hub.market_status
        body: dict[str, object] = {
            "status": "degraded" if down else "ok",
            "upstream": hub.upstream_state,
            "rest": running.rest.state,
            "market": market.as_dict() if market is not None else None,
            "demo": self._settings.demo,
            "clients": hub.client_count,
            "clients_fast_path": hub.stats.clients_fast_path,
            "clients_by_dialect": dict(hub.stats.clients_by_dialect),
            "auth": self._settings.auth_mode,
            "users": running.admission.users,
            "refusals": dict(sorted(running.admission.refused.items())),
            "symbols": hub.symbols(),
            "symbols_lingering": hub.capacity.lingering,
            "feeds": running.upstream.report(),  # the feed planner's: leader's on a cluster
            "upstream_messages_received": counters.messages,
            "upstream_trades_received": counters.trades,
            "upstream_messages_malformed": counters.malformed,
            "price_updates_sent": hub.stats.price_updates_sent,
            "conflated_updates": hub.stats.conflated_updates,
            "slow_consumer_disconnects": hub.stats.slow_consumer_disconnects,
            "reconnects": counters.reconnects,
            "rest_calls": running.rest.calls,
            "finnhub_rest": {  # the REST mirror, GET /api/v1/...
                "allowed": sorted(running.mirror.allowed),
                "forwarded": running.mirror.forwarded,
                "cache_hits": running.mirror.cache_hits,
                "coalesced": running.mirror.coalesced,
                "refusals": dict(sorted(running.mirror.refused.items())),
            },
            "uptime_seconds": round(time.monotonic() - running.started_at, 3),
            **running.cluster_health(),
        }
        recorder = hub.bars.recorder if hub.bars is not None else None
        if recorder is not None:  # ok, slow (a call waits), or degraded: serving from memory
            body["bar_store"] = recorder.state
            body["bar_store_kind"] = recorder.store.name
            body["bar_store_backlog"] = recorder.backlog
            if recorder.problem is not None:  # unusable until repaired: says how
                body["bar_store_error"] = recorder.problem
        if down:
            body["down"] = down  # part -> what ended it (an exception's type, never its text)
        return JSONResponse(body, status_code=503 if down else 200)

    async def quote(self, request: Request) -> JSONResponse:
        """The symbol's quote: cached, or fetched within QUOTE_WAIT; 404 when Finnhub has
        none, 503 with Retry-After when the REST budget or Finnhub cannot answer. A symbol
        nobody subscribes to is a one-off lookup, within the lookups' share."""
        asker = await self._symbol_and_owner(request)
        if isinstance(asker, JSONResponse):
            return asker
        symbol, admitted = asker
        hub = self._running().hub
        quotes = hub.quotes
        if quotes is None:
            return JSONResponse({"error": "quotes are off (REST_ENABLED=false)"}, 404)
        owners = (admitted.owner, admitted.address)  # a user's share, and its address's
        try:
            quote = await quotes.get(symbol, owners, lookup=symbol not in hub.interest)
        except QuoteUnavailable as exc:
            if exc.share_spent:
                whose = "your user or address" if admitted.identity else "your address"
                return _retry_later(f"too many quote requests from {whose}", exc.retry_after, 429)
            return _retry_later(f"no quote could be fetched in time ({exc})", exc.retry_after)
        if quote is None:
            return JSONResponse({"error": "no quote for this symbol", "symbol": symbol}, 404)
        return JSONResponse(protocol.quote_body(symbol, quote))

    async def bars(self, request: Request) -> Response:
        """A symbol's bars in Finnhub's candle shape (`t` in seconds), oldest first, the
        open bar last: the stored ones (any symbol the gateway ever recorded, followed
        now or not) with those held in memory, `from` <= t < `to` (seconds), the newest
        `limit`; `{"s": "no_data"}` with empty lists when there are none. 400 for a bad
        symbol, interval or bound."""
        interval = request.query_params.get("interval", "1m")
        if interval not in INTERVALS:
            return JSONResponse({"error": f"interval is one of {', '.join(INTERVALS)}"}, 400)
        try:
            params = request.query_params
            start = int(params.get("from", 0)) * 1000
            end = int(params.get("to", 2**40)) * 1000
            limit = int(params.get("limit", MAX_READ))
        except ValueError:
            return JSONResponse({"error": "from, to and limit are whole numbers"}, 400)
        if not (0 <= start <= end <= 2**50 and 1 <= limit <= MAX_READ):
            return JSONResponse({"error": f"0 <= from <= to, 1 <= limit <= {MAX_READ}"}, 400)
        asker = await self._symbol_and_owner(request)
        if isinstance(asker, JSONResponse):
            return asker
        symbol, admitted = asker
        bars = self._running().hub.bars
        if bars is None:
            return JSONResponse(candles([]))
        answer = await bars.read(
            admitted.owner,
            (symbol, interval, start, end, limit),
            lambda found: orjson.dumps(candles(found)),
        )
        if isinstance(answer, Refusal):
            return JSONResponse(answer.body(), answer.status, answer.headers())
        return Response(answer, media_type="application/json")

    async def _symbol_and_owner(self, request: Request) -> tuple[str, Admitted] | JSONResponse:
        """The path's symbol and who asks (whose shares the request spends: its user's
        with signed tokens, and its address's); or the refusal: 400, 401, 403 for a
        symbol the token's entitlements do not allow."""
        symbol = client_requests.normalize_symbol(request.path_params["symbol"])
        if symbol is None:
            return JSONResponse({"error": f"a symbol is {protocol.SYMBOL_RULE}"}, 400)
        admitted = await self._running().admission.admit(
            "request",
            address=address_key(request.client.host if request.client else "-"),
            token=request_token(request.query_params, request.headers),
            symbol=symbol,
        )
        if isinstance(admitted, Refusal):
            body = {"error": admitted.reason}
            if admitted.status == 403:
                body["code"] = "forbidden_symbol"
            return JSONResponse(body, admitted.status, admitted.headers())
        return symbol, admitted

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def demo(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "demo.html")

    async def favicon(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def docs(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self._docs_page)

    async def asyncapi(self, request: Request) -> Response:
        return Response(docs.ASYNCAPI.read_bytes(), media_type="application/yaml")


def _retry_later(message: str, seconds: float, status: int = 503) -> JSONResponse:
    retry = str(max(1, math.ceil(seconds)))
    return JSONResponse({"error": message}, status, headers={"Retry-After": retry})
