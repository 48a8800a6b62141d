"""One client's session on `/ws`: the handshake checks, then its requests, in order.

`ClientSessions.serve(websocket)` refuses a handshake that `Admission` turns down
(Origin, token, per-address limits; ws_handshake.py), accepts, and, when the gateway
verifies signed tokens, learns who the client is: from `?token=` at the handshake (401
when bad), or from a first message `{"action":"auth","token":...}` within
`AUTH_TIMEOUT` (else `auth_required` to anything sent before it, and `auth_failed` /
`auth_timeout` then a close with 4003 / 4008). It then registers the client with the
hub for the length of the connection (its user, else its address, is whose fair share
its symbols use) and turns each request its `RequestReader` (ws_io.py: frame size and
message budget) returns into a hub call, while it waits for the token's next deadline:
"expiring", then a close with 4001 unless a fresh token came. It closes a connection
itself only for the reasons it owns (1013 server full, 4001/4003/4008/4029 tokens; its
reader: 1008 rate limit, 1009 frame too big); everything else a client receives is
sent through its `ClientConnection`.
One line is logged per connect and per disconnect, naming the user, never the token.

This module must never write price updates (the hub does) and never reads uvicorn's
internals except through `server/connection.server_connection()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from starlette.websockets import WebSocket, WebSocketDisconnect

from hub import Hub
from stock_gateway import client_requests, protocol
from stock_gateway.access.admission import Admission, Admitted, OpenConnection
from stock_gateway.access.entitlements import Entitlements
from stock_gateway.access.token_session import ClientAuth
from stock_gateway.access.tokens import AuthFailed
from stock_gateway.delivery.encoders import WS
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.endpoints.ws_handshake import close_refused, close_with, open_socket
from stock_gateway.endpoints.ws_io import AsgiClientSocket, Ended, FastPath, RequestReader
from stock_gateway.endpoints.ws_requests import WsRequests, parse_client_message
from stock_gateway.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
)
from stock_gateway.runtime.logs import get_logger
from stock_gateway.server.connection import server_connection
from stock_gateway.settings import Settings

logger = get_logger(__name__)


class ClientSessions:
    """Serves every `/ws` connection of one app, with its settings and its hub."""

    def __init__(self, settings: Settings, hub: Hub, admission: Admission) -> None:
        self._settings = settings
        self._hub = hub
        self._admission = admission
        self._requests = WsRequests(hub)
        self._fast_path = FastPath(settings)

    async def serve(self, websocket: WebSocket) -> None:
        admission = self._admission
        token = websocket.query_params.get("token")
        connection = await open_socket(websocket, admission, token, token_later=True)
        if connection is None:
            return
        with connection:
            await websocket.accept()
            reader = RequestReader(websocket, self._settings)
            # With signed tokens and none at the handshake, the first message brings one.
            needs_token = admission.verifies_tokens and connection.admitted.identity is None
            if needs_token and not await self._authenticate(websocket, reader, connection):
                return
            await self._serve_accepted(websocket, reader, connection.admitted)

    async def _authenticate(
        self, websocket: WebSocket, reader: RequestReader, connection: OpenConnection
    ) -> bool:
        """The first message's token within AUTH_TIMEOUT, counted as the connection's
        user; False once the client is gone or closed (auth_failed 4003, auth_timeout
        4008, too_many_connections 4029)."""
        admission = self._admission
        try:
            async with asyncio.timeout(self._settings.auth_timeout):
                while True:
                    got = await reader.next()
                    if isinstance(got, Ended):
                        return False
                    if isinstance(got, client_requests.ProtocolError):
                        await websocket.send_text(
                            protocol.error_message(got.code, got.message).text
                        )
                        continue
                    try:
                        request = parse_client_message(got)
                    except client_requests.ProtocolError as exc:
                        if exc.code == "auth_failed":  # an auth message without a token
                            raise AuthFailed("invalid") from None
                        error = protocol.error_message(exc.code, exc.message)
                        await websocket.send_text(error.text)
                        continue
                    if request.action == "auth":
                        break
                    await websocket.send_text(AUTH_FIRST.text)
                refusal = await admission.admit_user(connection, request.token)
        except TimeoutError:
            admission.count_refusal("auth_timeout")
            error = protocol.error_message(
                "auth_timeout", f"no auth message within {self._settings.auth_timeout:g} s"
            )
            await close_with(websocket, error, CLOSE_AUTH_TIMEOUT, "auth timeout")
            return False
        except AuthFailed as exc:
            error = protocol.error_message("auth_failed", f"token {exc.reason}")
            await close_with(websocket, error, CLOSE_AUTH_FAILED, "auth failed")
            return False
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            return False  # gone while we answered
        if refusal is not None:
            await close_refused(websocket, refusal)
            return False
        return True

    async def _serve_accepted(
        self, websocket: WebSocket, reader: RequestReader, admitted: Admitted
    ) -> None:
        settings, hub = self._settings, self._hub
        address, identity = admitted.address, admitted.identity
        connection = server_connection(websocket.scope)
        if connection is not None and settings.client_send_buffer:
            connection.limit_send_buffer(settings.client_send_buffer)
        direct = self._fast_path.writer(connection)
        started = time.monotonic()
        close_code: int | None = None
        client_id = "-"
        user = identity.user if identity is not None else "-"
        auth = None
        if identity is not None:
            auth = ClientAuth(
                identity,
                self._admission.identify,
                warning=settings.auth_expiry_warning,
                leeway=settings.jwt_leeway,
            )
        socket = AsgiClientSocket(websocket, connection)
        if auth is not None:  # first, before `connection` (a small frame to an empty buffer)
            await websocket.send_text(
                protocol.auth_message("authenticated", user, auth.expires_in()).text
            )
        try:
            async with hub.connect(
                socket,
                direct,
                encoder=WS,
                owner=admitted.owner,
                address=admitted.address,
                entitlements=admitted.entitlements,
            ) as client:
                client_id = client.id
                logger.info(
                    "client connected client_id=%s address=%s user=%s fast_path=%s",
                    client.id, address, user, direct is not None,
                )  # fmt: skip
                self._apply_query_options(client, websocket.query_params)
                close_code = await self._serve_requests(websocket, reader, client, auth)
                if client.evicted:
                    close_code = CLOSE_TRY_AGAIN_LATER
        finally:
            if connection is not None and connection.stalled():
                # The connection is over but its unread output would keep it (and the
                # server's graceful shutdown) waiting forever.
                connection.abort()
            logger.info(
                "client disconnected client_id=%s address=%s user=%s code=%s duration=%.1fs",
                client_id, address, user, close_code, time.monotonic() - started,
            )  # fmt: skip

    async def _serve_requests(
        self,
        websocket: WebSocket,
        reader: RequestReader,
        client: ClientConnection,
        auth: ClientAuth | None,
    ) -> int | None:
        """Read and apply requests until the client leaves (the close code, if known),
        minding the token's deadlines when there is one."""
        while True:
            if auth is None:
                got = await reader.next()
            else:
                try:
                    async with asyncio.timeout(auth.wait()):
                        got = await reader.next()
                except TimeoutError:
                    deadline = auth.due()
                    if deadline is None:
                        continue
                    if deadline.kind == "expiring":
                        client.send(
                            protocol.auth_message("expiring", auth.identity.user, auth.expires_in())
                        )
                        continue
                    expired = protocol.auth_message("expired", auth.identity.user, 0)
                    await close_with(websocket, expired, CLOSE_TOKEN_EXPIRED, "token expired")
                    return CLOSE_TOKEN_EXPIRED
            if isinstance(got, Ended):
                return got.code
            if isinstance(got, client_requests.ProtocolError):
                client.send(protocol.error_message(got.code, got.message))
                continue
            code = await self._handle_request(websocket, client, got, auth)
            if code is not None:
                return code

    def _apply_query_options(self, client: ClientConnection, query: Mapping[str, str]) -> None:
        """`/ws?batch_ms=100&throttle_ms=250`: start in that mode (confirmed, or refused
        with `invalid_options` and the seed's protocol kept)."""
        if "throttle_ms" not in query and "batch_ms" not in query:
            return
        try:
            given = client_requests.parse_options(query, from_query=True)
        except client_requests.ProtocolError as exc:
            client.send(protocol.error_message(exc.code, exc.message))
            return
        self._hub.set_options(client, client.options.changed(given))

    async def _handle_request(
        self, websocket: WebSocket, client: ClientConnection, text: str, auth: ClientAuth | None
    ) -> int | None:
        """Apply one request; a close code when it ended the connection."""
        try:
            request = parse_client_message(text)
        except client_requests.ProtocolError as exc:
            if exc.code == "auth_failed" and auth is not None:  # an auth message, no token
                return await self._refresh(websocket, client, "", auth)
            client.send(protocol.error_message(exc.code, exc.message))
            return None
        if request.action == "auth":  # the session's own: it may close the socket
            return await self._refresh(websocket, client, request.token, auth)
        await self._requests.handle(client, request)
        return None

    async def _refresh(
        self, websocket: WebSocket, client: ClientConnection, token: str, auth: ClientAuth | None
    ) -> int | None:
        """A fresh token for the connected user: the stream goes on; a bad one closes (4003)."""
        if auth is None:
            client.send(
                protocol.error_message("invalid_message", "this gateway does not use auth messages")
            )
            return None
        try:
            identity = await auth.refresh(token)
        except AuthFailed as exc:
            error = protocol.error_message("auth_failed", f"token {exc.reason}")
            await close_with(websocket, error, CLOSE_AUTH_FAILED, "auth failed")
            return CLOSE_AUTH_FAILED
        if identity.entitlements != client.entitlements:
            self._entitle(client, identity.entitlements)
        client.send(protocol.auth_message("authenticated", identity.user, auth.expires_in()))
        return None

    def _entitle(self, client: ClientConnection, entitlements: Entitlements) -> None:
        """A refreshed token's entitlements: symbols (prices or bars) it no longer allows,
        or over its cap, are dropped: `forbidden_symbol`, then the unsubscriptions."""
        hub = self._hub
        client.set_entitlements(entitlements)
        cap = hub.holds.cap_for(entitlements)
        held = sorted(client.symbols | client.bar_intervals.keys())
        dropped = [symbol for symbol in held if not entitlements.allow(symbol)]
        dropped += [symbol for symbol in held if symbol not in dropped][cap:]
        if not dropped:
            return
        reason = "your refreshed token no longer entitles you to these symbols"
        message = f"{reason}: {', '.join(dropped)}"
        client.send(protocol.error_message("forbidden_symbol", message, dropped))
        prices = [symbol for symbol in dropped if symbol in client.symbols]
        if prices:
            hub.unsubscribe(client, prices)
        if hub.bars is not None:
            for symbol in dropped:
                hub.bars.drop(client, symbol)


AUTH_FIRST = protocol.error_message(
    "auth_required", 'send {"action":"auth","token":"..."} first; nothing else is served before it'
)
