"""The simulator's controls for benchmarks and tests, over HTTP: `GET /stats` (what was
sent, per second in sequenced mode, REST calls, the socket's cap;
`rest_calls_max_in_a_minute`, named for Finnhub's minute, is the most calls in any
`--rest-window` seconds, a minute unless shortened), `POST /rate?value=N`
(trades per second), `POST /drop` (close every gateway's socket, as a Finnhub restart)
and `POST /session?value=...` (the market's session). Never part of Finnhub's API."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web

from stock_gateway.market_data.model import SESSIONS, Session
from stock_gateway.simulator.rest import RestCalls


class Controlled(Protocol):
    """What the controls read and change of the simulated market (simulator/market.py)."""

    trades_sent: int
    rate: float
    session: Session
    connections: list[Any]
    sequences: dict[str, int]
    sent_per_second: dict[int, dict[str, int]]
    rest_calls: RestCalls
    refused_over_cap: int
    max_carried: int

    def subscribed_symbols(self) -> set[str]: ...

    def received_of(self, kind: str, symbol: str | None = None) -> list[dict[str, object]]: ...

    async def drop_connections(self) -> None: ...


def add_control_routes(app: web.Application, market: Controlled) -> None:
    async def _stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "trades_sent": market.trades_sent,
                "rate": market.rate,
                "connections": len(market.connections),
                "subscribed": sorted(market.subscribed_symbols()),
                "sequences": market.sequences,
                "sent_per_second": {str(k): v for k, v in market.sent_per_second.items()},
                "rest_calls": market.rest_calls.by_path(),
                "rest_calls_max_in_a_minute": market.rest_calls.max_in_any_window(),
                "refused_over_cap": market.refused_over_cap,
                "max_carried": market.max_carried,
                "socket_changes": len(market.received_of("subscribe"))
                + len(market.received_of("unsubscribe")),
            },
            dumps=lambda value: orjson.dumps(value).decode(),
        )

    async def _drop(request: web.Request) -> web.Response:
        dropped = len(market.connections)
        await market.drop_connections()
        return web.json_response({"dropped": dropped})

    async def _set_session(request: web.Request) -> web.Response:
        value = request.query.get("value", "")
        if value not in SESSIONS:
            return web.json_response({"error": f"value must be one of {SESSIONS}"}, status=400)
        market.session = value
        return web.json_response({"session": market.session})

    async def _set_rate(request: web.Request) -> web.Response:
        try:
            market.rate = float(request.query["value"])
        except (KeyError, ValueError):
            return web.json_response({"error": "POST /rate?value=<trades per second>"}, status=400)
        return web.json_response({"rate": market.rate})

    app.router.add_get("/stats", _stats)
    app.router.add_post("/rate", _set_rate)
    app.router.add_post("/drop", _drop)
    app.router.add_post("/session", _set_session)
