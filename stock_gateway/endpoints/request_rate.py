"""The per-address rate of plain HTTP requests, as an ASGI middleware in front of the
routes: each request spends one from its address's allowance (`Admission.pace_request`,
`HTTP_REQUESTS_PER_ADDRESS`), or is answered 429 with `Retry-After` before its route
runs, so a client hammering `/metrics` (whose cost grows with every client connected)
or `/quote` costs little more than the refusal.

Not paced here: WebSockets and `/stream`, whose handshakes have their own per-address
limits (`Admission.admit`), and `/health`, which does no I/O, costs the same whatever
the load, and must answer the local healthcheck and load balancers whatever a client
sharing their address does. Inside the CORS middleware, so a browser reads the 429.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from stock_gateway.access.admission import Admission
from stock_gateway.access.credentials import address_key

UNPACED_PATHS = frozenset({"/health", "/stream"})


class RequestRate:
    def __init__(self, app: ASGIApp, admission: Callable[[], Admission | None]) -> None:
        self._app = app
        self._admission = admission  # None while the lifespan is not running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admission = self._admission()
        if scope["type"] == "http" and scope["path"] not in UNPACED_PATHS and admission:
            client = scope.get("client")
            refusal = admission.pace_request(address_key(client[0] if client else "-"))
            if refusal is not None:
                response = JSONResponse(refusal.body(), refusal.status, refusal.headers())
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
