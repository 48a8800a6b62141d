"""`GET /stream`: the same messages as `/ws`, as Server-Sent Events, for the browser's
`EventSource` across proxies that drop WebSocket upgrades, and for `curl -N`.

`/stream?symbols=AAPL,MSFT[&throttle_ms=250&batch_ms=100][&token=...]`: each message is
one event, `event: <its type>` then `data: <its JSON>` (`price_update`, `quote`,
`status`, `market`, `options`, `error`, ...); a `: keep-alive` comment every
`HEARTBEAT_INTERVAL` seconds keeps idle proxies from cutting the stream. The same rules
as `/ws` apply: Origin, token (`?token=` or `Authorization: Bearer`; a signed token
gives the user's limits and entitlements, and since a stream cannot be handed a fresh
one, it gets `event: auth` "expiring", then "expired" and its end at the token's
`exp`), per-address limits, symbol limits and fair shares; snapshots and quotes come
first; a client that cannot keep up is conflated, then dropped; leaving releases every
symbol.

This module never reads a request body, and never blocks the broadcaster: events wait
in a small per-stream queue that the response drains. A stream whose client stopped
reading is blocked in its response's send, where no event can reach it: it is ended
from below. Its socket gets the WebSocket's kernel send buffer (`CLIENT_SEND_BUFFER`),
the server aborts it when its writes stay paused for `SLOW_CONSUMER_TIMEOUT`, and a
stream closed as a slow consumer has its socket aborted after the close's grace (the
`HttpConnection` the server puts in the scope). However the response ends, its events
are closed at once, releasing its symbols and its per-address slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from stock_gateway import client_requests, protocol
from stock_gateway.access.admission import Admitted
from stock_gateway.access.credentials import address_key, request_token
from stock_gateway.access.refusal import Refusal
from stock_gateway.access.token_session import ClientAuth
from stock_gateway.delivery.encoders import SSE
from stock_gateway.endpoints.running_app import RunningApp
from stock_gateway.protocol import Frame
from stock_gateway.runtime.logs import get_logger
from stock_gateway.server.connection import HttpConnection, http_connection
from stock_gateway.settings import Settings

logger = get_logger(__name__)

QUEUED_EVENTS = 64  # then the client's own outbox conflates, as for a slow WebSocket
MAX_SYMBOLS_IN_QUERY = 200


class EventStreamSocket:
    """A stream's end of the hub's `ClientSocket`: each frame becomes one SSE event.
    `close` ends the stream after the events before it; `abort` also drops the
    connection below (when the server gave a handle), so that a response blocked on a
    client that does not read ends too."""

    def __init__(self, connection: HttpConnection | None = None) -> None:
        self._events: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_EVENTS)
        self._queued = 0
        self._closed = False
        self._connection = connection

    async def send(self, frame: Frame) -> None:
        if self._closed:
            raise ConnectionError("stream closed")
        item = event(frame)
        self._queued += len(item)
        await self._events.put(item)

    async def take(self) -> bytes | None:
        """The next event for the response; None once the stream is closed."""
        item = await self._events.get()
        if item:
            self._queued -= len(item)
        return item

    async def close(self, code: int, reason: str) -> None:
        self._end()

    def abort(self) -> None:
        self._end()
        if self._connection is not None:
            self._connection.abort()

    def finished(self) -> None:
        """The response is over: the connection may carry the next request, and is no
        longer this stream's to abort."""
        self._connection = None

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            if self._events.full():
                self._events.get_nowait()  # make room for the end
            self._events.put_nowait(None)

    def queued_bytes(self) -> int:
        """Events not yet handed to the response, and what the server and the kernel
        still hold for the client."""
        below = self._connection.queued_bytes() if self._connection is not None else 0
        return self._queued + below


class EventStreamResponse(StreamingResponse):
    """A streaming response that closes its events however it ends: a response cut
    while its generator waits in `yield` (the client went away, or was aborted) would
    otherwise leave the generator, its symbols and its slot to the garbage collector."""

    def __init__(self, events: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._generator = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generator.aclose()


def event(frame: Frame) -> bytes:
    """`event: <type>\\ndata: <json>\\n\\n`: the event is named after the message."""
    return b"event: %s\ndata: %s\n\n" % (frame.kind.encode(), frame.payload)


class EventStreams:
    def __init__(self, settings: Settings, running: Callable[[], RunningApp]) -> None:
        self._settings = settings
        self._running = running

    async def stream(self, request: Request) -> Response:
        admitted = await self._running().admission.admit(
            "connection",
            address=address_key(request.client.host if request.client else "-"),
            origin=request.headers.get("origin"),
            host=request.headers.get("host"),
            token=request_token(request.query_params, request.headers),
        )
        if isinstance(admitted, Refusal):
            return JSONResponse({"error": admitted.reason}, admitted.status, admitted.headers())
        raw = [part for part in request.query_params.get("symbols", "").split(",") if part]
        symbols, rejected = client_requests.split_symbols(tuple(raw[:MAX_SYMBOLS_IN_QUERY]))
        if rejected or not symbols:
            return JSONResponse({"error": f"symbols=... each {protocol.SYMBOL_RULE}"}, 400)
        given: dict[str, int] = {}
        if "throttle_ms" in request.query_params or "batch_ms" in request.query_params:
            try:
                given = client_requests.parse_options(request.query_params, from_query=True)
            except client_requests.ProtocolError as exc:
                return JSONResponse({"error": exc.message, "code": exc.code}, 400)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        connection = http_connection(request.scope)
        if connection is not None and self._settings.client_send_buffer:
            # As for a WebSocket: what a client that stops reading pins in the kernel.
            connection.limit_send_buffer(self._settings.client_send_buffer)
        body = self._events(admitted, symbols, given, EventStreamSocket(connection))
        return EventStreamResponse(body, headers)

    async def _events(
        self,
        admitted: Admitted,
        symbols: list[str],
        given: dict[str, int],
        socket: EventStreamSocket,
    ) -> AsyncGenerator[bytes, None]:
        running = self._running()
        hub, admission = running.hub, running.admission
        heartbeat = self._settings.heartbeat_interval or 20.0
        started = time.monotonic()
        address, identity, user = admitted.address, admitted.identity, admitted.user
        auth = None
        if identity is not None:
            auth = ClientAuth(
                identity,
                admission.identify,
                warning=self._settings.auth_expiry_warning,
                leeway=self._settings.jwt_leeway,
            )
        # Counted here, in the response's task: `open` checks the counts again first,
        # with nothing awaited in between (parallel requests passed `admit` together).
        connection = admission.open(admitted)
        if isinstance(connection, Refusal):
            yield event(protocol.error_message("too_many_connections", connection.reason))
            return
        with connection:
            async with hub.connect(
                socket,
                None,
                owner=admitted.owner,
                address=admitted.address,
                entitlements=admitted.entitlements,
                encoder=SSE,
            ) as client:
                logger.info(
                    "stream opened client_id=%s address=%s user=%s", client.id, address, user
                )
                try:
                    if given:
                        hub.set_options(client, client.options.changed(given))
                    hub.subscribe(client, symbols)
                    while True:
                        wait = heartbeat if auth is None else auth.wait(heartbeat)
                        try:
                            async with asyncio.timeout(wait):
                                item = await socket.take()
                        except TimeoutError:
                            deadline = auth.due() if auth is not None else None
                            if auth is None or deadline is None:
                                yield b": keep-alive\n\n"
                                continue
                            # A stream cannot be given a fresh token: warn, then end it
                            # at `exp`; EventSource reconnects (with a fresh ?token=).
                            ending = protocol.auth_message(deadline.kind, user, auth.expires_in())
                            yield event(ending)
                            if deadline.kind == "expired":
                                return
                            continue
                        if item is None:
                            return  # closed by the gateway (a slow consumer)
                        yield item
                finally:
                    socket.finished()
                    logger.info(
                        "stream closed client_id=%s address=%s user=%s duration=%.1fs",
                        client.id, address, user, time.monotonic() - started,
                    )  # fmt: skip
