"""One client's session on `/ws`: the handshake checks, then its requests, in order.

`ClientSessions.serve(websocket)` refuses a handshake that `Admission` turns down
(Origin, token, per-address limits), accepts, registers the client with the hub for
the length of the connection (its address is whose fair share its symbols use),
and turns each text frame into a hub call within the client's message budget (a token
bucket). It closes a connection itself only for the reasons it owns (1008 rate limit,
1009 frame too big, 1013 server full); everything else a client receives is sent
through its `ClientConnection`. One line is logged per connect and per disconnect.

This module must never write price updates (the hub does) and never reads uvicorn's
internals except through `server_protocol.server_connection()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

import protocol
from admission import Admission, Refusal, address_key
from client_connection import ClientConnection, FrameWriter
from hub import Hub
from protocol import CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER
from server_protocol import FAST_PATH_FLAGS, ServerConnection, server_connection
from settings import Settings
from token_bucket import TokenBucket

logger = logging.getLogger(__name__)


class AsgiClientSocket:
    """A Starlette WebSocket as the hub's `ClientSocket`: ASGI sends, which work under
    any server; `abort` needs our server protocol and is a no-op elsewhere."""

    def __init__(self, websocket: WebSocket, connection: ServerConnection | None) -> None:
        self._websocket = websocket
        self._connection = connection

    async def send_text(self, frame: str) -> None:
        try:
            await self._websocket.send_text(frame)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionError("client socket closed") from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionError("client socket closed") from exc

    def abort(self) -> None:
        if self._connection is not None:
            self._connection.abort()

    def queued_bytes(self) -> int:
        return self._connection.queued_bytes() if self._connection is not None else 0


def _size_in_bytes(text: str) -> int:
    """UTF-8 length, encoding only when the character count leaves it in doubt."""
    return len(text) if text.isascii() else len(text.encode())


class ClientSessions:
    """Serves every `/ws` connection of one app, with its settings and its hub."""

    def __init__(self, settings: Settings, hub: Hub, admission: Admission) -> None:
        self._settings = settings
        self._hub = hub
        self._admission = admission
        self._warned_no_fast_path = False

    async def serve(self, websocket: WebSocket) -> None:
        settings, hub = self._settings, self._hub
        address = _address(websocket)
        refusal = self._admission.refusal(
            websocket.headers.get("origin"),
            websocket.query_params.get("token"),
            address,
            time.monotonic(),
        )
        if refusal is not None:
            origin = websocket.headers.get("origin", "")[:100]
            logger.warning(
                "websocket refused status=%d reason=%r address=%s origin=%r",
                refusal.status, refusal.reason, address, origin,
            )  # fmt: skip
            await _refuse(websocket, refusal)
            return
        with self._admission.holding(address):
            await websocket.accept()
            if hub.client_count >= settings.max_clients:
                await websocket.close(CLOSE_TRY_AGAIN_LATER, "server full, try again later")
                return
            await self._serve_accepted(websocket, address)

    async def _serve_accepted(self, websocket: WebSocket, address: str) -> None:
        settings, hub = self._settings, self._hub
        connection = server_connection(websocket.scope)
        if connection is not None and settings.client_send_buffer:
            connection.limit_send_buffer(settings.client_send_buffer)
        direct = self._frame_writer(connection)
        started = time.monotonic()
        close_code: int | None = None
        client_id = "-"
        socket = AsgiClientSocket(websocket, connection)
        try:
            async with hub.connect(socket, direct, owner=address) as client:
                client_id = client.id
                logger.info(
                    "client connected client_id=%s address=%s fast_path=%s",
                    client.id, address, direct is not None,
                )  # fmt: skip
                self._apply_query_options(client, websocket.query_params)
                close_code = await self._serve_requests(websocket, client)
                if client.evicted:
                    close_code = CLOSE_TRY_AGAIN_LATER
        finally:
            if connection is not None and connection.stalled():
                # The connection is over but its unread output would keep it (and the
                # server's graceful shutdown) waiting forever.
                connection.abort()
            logger.info(
                "client disconnected client_id=%s address=%s code=%s duration=%.1fs",
                client_id, address, close_code, time.monotonic() - started,
            )  # fmt: skip

    def _frame_writer(self, connection: ServerConnection | None) -> FrameWriter | None:
        """The fast path where the server allows it; say once, loudly, when it does not."""
        if not self._settings.direct_writes:
            return None
        writer = connection.frame_writer() if connection is not None else None
        if writer is None and not self._warned_no_fast_path:
            self._warned_no_fast_path = True
            why = (
                "this server does not run the gateway's WebSocket protocol"
                if connection is None
                else "the client negotiated permessage-deflate"
            )
            logger.warning(
                "fast path off: %s, so clients get plain ASGI sends (2-3x the CPU per "
                "update); run `python gateway.py`, or uvicorn with %s",
                why, FAST_PATH_FLAGS,
            )  # fmt: skip
        return writer

    async def _serve_requests(self, websocket: WebSocket, client: ClientConnection) -> int | None:
        """Read and apply requests until the client leaves; the close code, if known."""
        settings = self._settings
        budget = TokenBucket(settings.client_message_rate, settings.client_message_burst)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code: int | None = message.get("code")
                return code
            text, data = message.get("text"), message.get("bytes")
            size = _size_in_bytes(text) if text is not None else len(data or b"")
            if size > settings.max_message_size:
                reason = f"message over {settings.max_message_size} bytes"
                await websocket.close(CLOSE_MESSAGE_TOO_BIG, reason)
                return CLOSE_MESSAGE_TOO_BIG
            now = time.monotonic()
            if not budget.allow(now):
                if budget.limited_for(now) > settings.rate_limit_close_after:
                    await websocket.close(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
                    return CLOSE_POLICY_VIOLATION
                client.send(
                    protocol.error_message(
                        "rate_limited",
                        f"over {settings.client_message_rate:g} messages per second; "
                        "message ignored",
                    )
                )
            elif text is None:
                client.send(
                    protocol.error_message(
                        "invalid_message", "binary frames are not supported; send JSON text"
                    )
                )
            else:
                self._handle_request(client, text)

    def _apply_query_options(self, client: ClientConnection, query: Mapping[str, str]) -> None:
        """`/ws?batch_ms=100&throttle_ms=250`: start in that mode (confirmed, or refused
        with `invalid_options` and the seed's protocol kept)."""
        if "throttle_ms" not in query and "batch_ms" not in query:
            return
        try:
            given = protocol.parse_options(query, from_query=True)
        except protocol.ProtocolError as exc:
            client.send(protocol.error_message(exc.code, exc.message))
            return
        self._hub.set_options(client, client.options.changed(given))

    def _handle_request(self, client: ClientConnection, text: str) -> None:
        try:
            request = protocol.parse_client_message(text)
        except protocol.ProtocolError as exc:
            client.send(protocol.error_message(exc.code, exc.message))
            return
        if request.action == "ping":
            client.send(protocol.PONG)
            return
        if request.action == "options":
            assert request.options is not None
            self._hub.set_options(client, client.options.changed(request.options))
            return
        symbols, rejected = protocol.split_symbols(request.symbols)
        if rejected:
            client.send(protocol.invalid_symbols_error(rejected))
        if not symbols:
            return
        if request.action == "subscribe":
            self._hub.subscribe(client, symbols)
        else:
            self._hub.unsubscribe(client, symbols)


async def _refuse(websocket: WebSocket, refusal: Refusal) -> None:
    """Refuse a handshake with an HTTP status and a plain-text reason where the server
    supports denial responses; otherwise a close before accept (uvicorn answers 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
        response = PlainTextResponse(refusal.reason, status_code=refusal.status, headers=headers)
        await websocket.send_denial_response(response)
    else:
        await websocket.close(CLOSE_POLICY_VIOLATION, refusal.reason)


def _address(websocket: WebSocket) -> str:
    """Whose per-address allowance this client uses (an IPv6 client: its /64)."""
    client = websocket.client
    return address_key(client.host) if client is not None else "-"
