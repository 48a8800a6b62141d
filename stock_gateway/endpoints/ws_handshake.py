"""A WebSocket handshake through the one admission path, and closing a socket with a
reason: shared by `/ws` (ws_session.py) and Finnhub's `/` (finnhub_ws.py).

`open_socket` asks `Admission` whether this handshake may go on (Origin, token,
per-address limits, `MAX_CLIENTS`): the connection, counted while open, or a refusal
answered with its HTTP status and reason where the server supports denial responses (a
close before accept otherwise; a full server accepts and closes with 1013). `close_with`
tells a client why, then closes, cutting off one that does not read.

This module never serves a request after the handshake (the sessions do).
"""

from __future__ import annotations

import asyncio

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from stock_gateway import protocol
from stock_gateway.access.admission import Admission, Admitted, OpenConnection
from stock_gateway.access.credentials import address_key
from stock_gateway.access.refusal import Refusal
from stock_gateway.protocol import CLOSE_GRACE_SECONDS, CLOSE_POLICY_VIOLATION, Frame
from stock_gateway.runtime.logs import get_logger
from stock_gateway.server.connection import server_connection

logger = get_logger(__name__)


async def close_with(websocket: WebSocket, error: Frame, code: int, reason: str) -> None:
    """Tell a client why, then close; a client that does not read is cut off instead."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_SECONDS):
            await websocket.send_text(error.text)
            await websocket.close(code, reason)
    except TimeoutError:
        connection = server_connection(websocket.scope)
        if connection is not None:
            connection.abort()
    except (WebSocketDisconnect, RuntimeError):
        pass  # already gone


async def close_refused(websocket: WebSocket, refusal: Refusal) -> None:
    """An accepted socket refused: the error (when it has a code), then its close code."""
    code = refusal.close_code or CLOSE_POLICY_VIOLATION
    if refusal.code is None:
        await websocket.close(code, refusal.reason)
        return
    error = protocol.error_message(refusal.code, refusal.reason)
    await close_with(websocket, error, code, refusal.code.replace("_", " "))


async def refuse_handshake(websocket: WebSocket, refusal: Refusal, address: str) -> None:
    """Refuse a handshake with an HTTP status and a plain-text reason where the server
    supports denial responses; otherwise a close before accept (uvicorn answers 403).
    A full server accepts and closes with 1013, which every client can read and retry."""
    origin = websocket.headers.get("origin", "")[:100]
    logger.warning(
        "websocket refused status=%d reason=%r address=%s origin=%r",
        refusal.status, refusal.reason, address, origin,
    )  # fmt: skip
    if refusal.status == 503 and refusal.close_code is not None:
        await websocket.accept()
        await websocket.close(refusal.close_code, refusal.reason)
        return
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = PlainTextResponse(
            refusal.reason, status_code=refusal.status, headers=refusal.headers()
        )
        await websocket.send_denial_response(response)
    else:
        await websocket.close(CLOSE_POLICY_VIOLATION, refusal.reason)


async def open_socket(
    websocket: WebSocket, admission: Admission, token: str | None, *, token_later: bool = False
) -> OpenConnection | None:
    """A WebSocket handshake through the one admission path: the connection, counted
    while open; or None once the handshake was refused (its status and reason sent)."""
    address = _address(websocket)
    admitted = await admission.admit(
        "connection",
        address=address,
        origin=websocket.headers.get("origin"),
        host=websocket.headers.get("host"),
        token=token,
        token_later=token_later,
    )
    connection = admission.open(admitted) if isinstance(admitted, Admitted) else admitted
    if isinstance(connection, Refusal):
        await refuse_handshake(websocket, connection, address)
        return None
    return connection


def _address(websocket: WebSocket) -> str:
    """Whose per-address allowance this client uses (an IPv6 client: its /64)."""
    client = websocket.client
    return address_key(client.host) if client is not None else "-"
