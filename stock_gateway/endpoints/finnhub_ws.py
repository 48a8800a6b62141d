"""Finnhub's own WebSocket protocol, at `/`: existing Finnhub apps and scripts point
`wss://ws.finnhub.io?token=...` at `ws://gateway:8000?token=...` and keep working, all
of them on the gateway's one upstream socket.

In: `{"type":"subscribe","symbol":"AAPL"}` and `{"type":"unsubscribe","symbol":"AAPL"}`.
Out: for each upstream message, one `{"type":"trade","data":[{"s","p","t","v","c"},...]}`
with this client's trades of it in upstream order, each as Finnhub sent it (of each
symbol the newest 100, as `/ws` bounds its updates: delivery/trade_groups.py);
`{"type":"ping"}` every `HEARTBEAT_INTERVAL`; `{"type":"error","msg":"..."}` for a
refused request, after which the connection stays open; among them a subscribe or
unsubscribe that would give the client's address more than
`MAX_SYMBOL_SETS_PER_ADDRESS` distinct symbol sets (each is one frame built per upstream
message). Nothing of the gateway's own
protocol, and nothing Finnhub sent but trades, ever reaches these clients.

Everything else is shared with `/ws`: admission (Origin, per-address and per-user
limits, `MAX_CLIENTS`), the holds (symbol caps, fair shares, entitlements), one
upstream subscription per symbol whoever holds it, the linger, slow-consumer handling,
the fast path. `?token=` is the gateway's own credential when one is configured
(`GATEWAY_TOKEN` or signed tokens: 401 at the handshake when it does not verify) and is
ignored otherwise. A signed token ends the session as on every surface
(access/token_session.py): at `exp` plus `JWT_LEEWAY`, `{"type":"error","msg":"Token
expired"}` and a close with 4001 (Finnhub's protocol has no way to refresh it). When
ignored, a client that still sends its own Finnhub key has it dropped, never forwarded,
never logged.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.websockets import WebSocket

from hub import Hub
from stock_gateway import client_requests
from stock_gateway.access.admission import Admission, Admitted
from stock_gateway.access.token_session import ClientAuth
from stock_gateway.client_requests import ProtocolError
from stock_gateway.delivery.finnhub_encoder import FINNHUB
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.endpoints.ws_handshake import close_with, open_socket
from stock_gateway.endpoints.ws_io import AsgiClientSocket, Ended, FastPath, RequestReader
from stock_gateway.protocol import CLOSE_TOKEN_EXPIRED, Frame
from stock_gateway.runtime.logs import get_logger
from stock_gateway.server.connection import server_connection
from stock_gateway.settings import Settings

logger = get_logger(__name__)


PING = Frame(b'{"type":"ping"}', "ping")
TOKEN_EXPIRED = FINNHUB.error("Token expired")


class FinnhubSessions:
    """Serves every Finnhub-dialect connection of one app."""

    def __init__(self, settings: Settings, hub: Hub, admission: Admission) -> None:
        self._settings = settings
        self._hub = hub
        self._admission = admission
        self._fast_path = FastPath(settings)

    async def serve(self, websocket: WebSocket) -> None:
        admission, settings = self._admission, self._settings
        credential = settings.gateway_token or admission.verifies_tokens
        # Finnhub's clients send their key here: the gateway's own credential when it
        # has one, else dropped on the floor.
        token = websocket.query_params.get("token") if credential else None
        connection = await open_socket(websocket, admission, token)
        if connection is None:
            return
        with connection:
            await websocket.accept()
            await self._serve_accepted(websocket, connection.admitted)

    async def _serve_accepted(self, websocket: WebSocket, admitted: Admitted) -> None:
        auth = None
        if admitted.identity is not None:  # a signed token: it ends the session at `exp`
            auth = ClientAuth(
                admitted.identity,
                self._admission.identify,
                warning=self._settings.auth_expiry_warning,
                leeway=self._settings.jwt_leeway,
            )
        server = server_connection(websocket.scope)
        if server is not None and self._settings.client_send_buffer:
            server.limit_send_buffer(self._settings.client_send_buffer)
        reader = RequestReader(websocket, self._settings)
        started = time.monotonic()
        async with self._hub.connect(
            AsgiClientSocket(websocket, server),
            self._fast_path.writer(server),
            owner=admitted.owner,
            address=admitted.address,
            entitlements=admitted.entitlements,
            encoder=FINNHUB,
        ) as client:
            logger.info(
                "finnhub client connected client_id=%s address=%s user=%s",
                client.id, admitted.address, admitted.user,
            )  # fmt: skip
            try:
                await self._serve_requests(websocket, reader, client, auth)
            finally:
                if server is not None and server.stalled():
                    server.abort()  # its unread output would hold the close forever
                logger.info(
                    "finnhub client disconnected client_id=%s address=%s duration=%.1fs",
                    client.id, admitted.address, time.monotonic() - started,
                )  # fmt: skip

    async def _serve_requests(
        self,
        websocket: WebSocket,
        reader: RequestReader,
        client: ClientConnection,
        auth: ClientAuth | None,
    ) -> None:
        heartbeat = self._settings.heartbeat_interval or None
        while not client.evicted:
            wait = heartbeat if auth is None else auth.wait(heartbeat)
            try:
                async with asyncio.timeout(wait):
                    got = await reader.next()
            except TimeoutError:
                deadline = auth.due() if auth is not None else None
                if deadline is None:
                    client.send(PING)  # Finnhub's keep-alive, about once a heartbeat
                elif deadline.kind == "expired":  # Finnhub's protocol has no refresh
                    await close_with(websocket, TOKEN_EXPIRED, CLOSE_TOKEN_EXPIRED, "token expired")
                    return
                continue
            if isinstance(got, Ended):
                return
            if isinstance(got, ProtocolError):
                client.send(FINNHUB.error(got.message))
                continue
            self._handle(client, got)

    def _handle(self, client: ClientConnection, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            client.send(FINNHUB.error("Invalid JSON"))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        raw = message.get("symbol") if isinstance(message, dict) else None
        if kind not in ("subscribe", "unsubscribe") or not isinstance(raw, str):
            client.send(FINNHUB.error('Send {"type":"subscribe","symbol":"AAPL"} or unsubscribe'))
            return
        symbol = client_requests.normalize_symbol(raw)
        if symbol is None:
            client.send(FINNHUB.error(f"Invalid symbol {raw[:40]}"))
            return
        if symbol in client.symbols and kind == "subscribe":
            return  # held already: the same set (no new one to count)
        if symbol not in client.symbols and kind == "unsubscribe":
            return
        refusal = self._set_refusal(client, kind, symbol)
        if refusal is not None:
            client.send(FINNHUB.error(refusal))
        elif kind == "subscribe":
            self._hub.subscribe(client, [symbol])
        else:
            self._hub.unsubscribe(client, [symbol])

    def _set_refusal(self, client: ClientConnection, kind: str, symbol: str) -> str | None:
        """Why the symbol set the request leads to is refused: one more set for the
        client's address over MAX_SYMBOL_SETS_PER_ADDRESS. Each distinct set is one frame
        encoded per upstream message, so an address splitting its clients over many sets
        would multiply the gateway's work; an unsubscribe that would is refused too (the
        client keeps the symbol), or subscribing all and dropping one each would evade it."""
        after = client.symbols | {symbol} if kind == "subscribe" else client.symbols - {symbol}
        trades, limit = self._hub.trades, self._settings.max_symbol_sets_per_address
        if trades.sets_of(client.address) < limit or not trades.would_add_set(
            client, FINNHUB, after
        ):
            return None
        return (
            f"too many distinct symbol sets from your address (at most {limit}); "
            f"{kind} refused: {symbol}"
        )
