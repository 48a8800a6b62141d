"""The Starlette application: HTTP endpoints, the `/ws` route, and the lifespan that
owns the upstream feed and the broadcaster.

Data flows one way: Finnhub -> `finnhub_feed` -> `Hub` queue -> broadcaster -> each
client's outbox -> its socket. This module only wires those parts together and
translates client frames into hub calls; it must never send to a client's socket
itself (the client's writer does) and never expose the Finnhub key.

Run it with `python gateway.py [--demo]` or `uvicorn gateway:app`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

import docs
import metrics
import protocol
import simulator
from cluster import Cluster
from finnhub_feed import Backoff, FinnhubFeed
from hub import ClientConnection, Hub
from settings import ConfigError, Settings, load_settings

logger = logging.getLogger("gateway")

DEMO_TOKEN = "demo"
STATIC = Path(__file__).with_name("static")


class StarletteClientSocket:
    """Adapts a Starlette WebSocket to the hub's `ClientSocket`."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

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
        # ASGI has no "abort": a client that never reads keeps a graceful close (and
        # its buffered bytes) pending forever, so drop the connection from below.
        transport = _transport_of(_server_protocol(self._websocket))
        if transport is not None:
            transport.abort()


class UvicornFrameWriter:
    """The fast path: pre-built frames written straight to uvicorn's transport.

    ASGI sends one message per awaited call through three layers; fan-out to thousands
    of clients spends most of its time there (see BENCHMARKS.md). Server frames are
    unmasked, so one encoded frame can be written as-is to every subscriber. This is
    only safe on uvicorn's websockets-sansio protocol with no extension negotiated
    (permessage-deflate would need compressed frames), and it never writes after a
    close frame went out or the transport started closing. Anywhere else `attach`
    returns None and the client uses plain ASGI sends.
    """

    def __init__(self, server: Any, transport: asyncio.Transport, writable: asyncio.Event) -> None:
        self._server = server
        self._transport = transport
        self._writable = writable

    @classmethod
    def attach(cls, websocket: WebSocket) -> UvicornFrameWriter | None:
        server = _server_protocol(websocket)
        if type(server).__module__ != "uvicorn.protocols.websockets.websockets_sansio_impl":
            return None
        transport = _transport_of(server)
        writable = getattr(server, "writable", None)
        extensions = getattr(getattr(server, "conn", None), "extensions", None)
        if (
            transport is not None
            and isinstance(writable, asyncio.Event)
            and extensions == []
            and isinstance(getattr(server, "close_sent", None), bool)
        ):
            return cls(server, transport, writable)
        return None

    def ready(self) -> bool:
        return (
            self._writable.is_set()
            and not self._server.close_sent
            and not self._transport.is_closing()
        )

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def stalled(self) -> bool:
        """The peer is not reading: the send buffer is above its high-water mark."""
        return not self._writable.is_set()

    async def wait_ready(self) -> None:
        await self._writable.wait()
        if self._server.close_sent or self._transport.is_closing():
            raise ConnectionError("client socket closed")


def _server_protocol(websocket: WebSocket) -> object | None:
    # uvicorn's receive callable is a bound method of its per-connection protocol.
    return getattr(websocket._receive, "__self__", None)


def _limit_send_buffer(websocket: WebSocket, size: int) -> None:
    """Cap the kernel's send buffer for one client, so a stalled one holds little memory."""
    transport = _transport_of(_server_protocol(websocket))
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _transport_of(server: object | None) -> asyncio.Transport | None:
    """The server protocol's transport: asyncio's or uvloop's (which is no subclass)."""
    transport = getattr(server, "transport", None)
    if all(callable(getattr(transport, name, None)) for name in ("write", "abort", "is_closing")):
        return cast(asyncio.Transport, transport)
    return None


def _size_in_bytes(text: str) -> int:
    """UTF-8 length, encoding only when the character count leaves it in doubt."""
    return len(text) if text.isascii() else len(text.encode())


class TokenBucket:
    """Per-client message budget: `rate` per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._updated: float | None = None
        self._limited_since: float | None = None

    def allow(self, now: float) -> bool:
        if self._updated is not None:
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            # A client is over its budget until its bucket has refilled halfway: one
            # message slipping through between refusals does not make it well-behaved.
            if self._tokens >= self._capacity / 2:
                self._limited_since = None
            self._tokens -= 1
            return True
        if self._limited_since is None:
            self._limited_since = now
        return False

    def limited_for(self, now: float) -> float:
        """How long the client has been over its budget (0 when it is within it)."""
        return 0.0 if self._limited_since is None else now - self._limited_since


async def _refuse(websocket: WebSocket, status: int, reason: str) -> None:
    """Refuse a handshake with an HTTP status and a plain-text reason where the server
    supports denial responses; otherwise a close before accept (uvicorn answers 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(reason, status_code=status))
    else:
        await websocket.close(1008, reason)


_QUERY_STRING = re.compile(r"(\s/[^\s?\"]*)\?[^\s\"]*")


class RedactTokens(logging.Filter):
    """uvicorn logs request paths with their query string (`/ws?token=...`, or any
    percent-encoded spelling of it): drop every query string from its lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY_STRING.sub(r"\1?***", message), ()
        return True


@dataclass
class Running:
    """What exists while the app is up: created and torn down by the lifespan."""

    hub: Hub
    feed: FinnhubFeed
    started_at: float
    cluster: Cluster | None = None


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._running: Running | None = None
        self.metrics_registry, self._handoff_seconds = metrics.create_registry(
            lambda: self._running
        )
        self._docs_page = docs.render_docs(docs.load_asyncapi())

    @property
    def running(self) -> Running:
        if self._running is None:
            raise RuntimeError("the gateway is not running (lifespan not started)")
        return self._running

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        configure_logging(settings.log_level, settings.log_format)
        try:
            settings.require_upstream()
        except ConfigError as exc:
            logger.error("%s", exc)
            raise
        async with AsyncExitStack() as stack:
            url, key = settings.finnhub_ws_url, settings.finnhub_api_key
            if settings.demo and not key:
                market = simulator.MarketSimulator(rate=settings.demo_trade_rate)
                url = await stack.enter_async_context(simulator.serve(market))
                key = DEMO_TOKEN
                logger.warning("DEMO MODE: prices are SIMULATED by simulator.py at %s", url)
            feed = FinnhubFeed(
                url,
                key,
                backoff=Backoff(settings.reconnect_initial_delay, settings.reconnect_max_delay),
                reset_backoff_after=settings.reconnect_reset_after,
                idle_timeout=settings.upstream_idle_timeout,
            )
            cluster = (
                Cluster(
                    settings.redis_url,
                    feed,
                    prefix=settings.redis_prefix,
                    lease_seconds=settings.leader_lease_seconds,
                )
                if settings.redis_url
                else None
            )
            hub = Hub(
                feed if cluster is None else cluster.interest,
                outbox_size=settings.client_outbox_size,
                slow_consumer_timeout=settings.slow_consumer_timeout,
                max_symbols_per_client=settings.max_symbols_per_client,
                max_upstream_symbols=settings.max_upstream_symbols,
                handoff_observer=self._handoff_seconds,
            )
            self._running = Running(hub, feed, time.monotonic(), cluster)
            if cluster is None:
                tasks = [
                    asyncio.create_task(_logged(feed.run(hub)), name="finnhub-feed"),
                    asyncio.create_task(_logged(hub.broadcast_forever()), name="broadcaster"),
                ]
            else:
                # The feed runs only while this process holds the lease; trades reach the
                # hub through Redis, already encoded.
                tasks = [asyncio.create_task(_logged(cluster.run(hub)), name="cluster")]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._running = None

    # -- HTTP ------------------------------------------------------------------------

    async def root(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "service": "stock-price-gateway",
                "websocket": "/ws",
                "health": "/health",
                "docs": "/docs",
                "demo": "/demo",
            }
        )

    async def health(self, request: Request) -> JSONResponse:
        running = self.running
        hub, feed = running.hub, running.feed
        return JSONResponse(
            {
                "status": "ok",
                "upstream": hub.upstream_state,
                "demo": self.settings.demo,
                "clients": hub.client_count,
                "clients_fast_path": hub.fast_path_count,
                "symbols": hub.symbols(),
                "upstream_messages_received": feed.messages_received,
                "upstream_trades_received": feed.trades_received,
                "upstream_messages_malformed": feed.malformed_messages,
                "price_updates_sent": hub.stats.price_updates_sent,
                "conflated_updates": hub.stats.conflated_updates,
                "slow_consumer_disconnects": hub.stats.slow_consumer_disconnects,
                "reconnects": feed.reconnects,
                "uptime_seconds": round(time.monotonic() - running.started_at, 3),
                **self._cluster_health(running.cluster),
            }
        )

    @staticmethod
    def _cluster_health(cluster: Cluster | None) -> dict[str, object]:
        if cluster is None:
            return {}
        return {
            "cluster": "degraded" if cluster.degraded else "ok",
            "role": cluster.role,
            "node": cluster.node,
            "lease_holder": cluster.lease_holder,
            "cluster_nodes": cluster.nodes,
            "cluster_symbols": len(cluster.cluster_symbols),
        }

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    async def demo(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "demo.html")

    async def docs(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self._docs_page)

    async def asyncapi(self, request: Request) -> Response:
        return Response(docs.ASYNCAPI.read_bytes(), media_type="application/yaml")

    # -- WebSocket ---------------------------------------------------------------------

    async def serve_websocket(self, websocket: WebSocket) -> None:
        settings, hub = self.settings, self.running.hub
        refusal = self._handshake_refusal(websocket)
        if refusal is not None:
            status, reason = refusal
            origin = websocket.headers.get("origin", "")[:100]
            logger.warning(
                "websocket refused status=%d reason=%r origin=%r", status, reason, origin
            )
            await _refuse(websocket, status, reason)
            return
        await websocket.accept()
        if hub.client_count >= settings.max_clients:
            await websocket.close(1013, "server full, try again later")
            return
        if settings.client_send_buffer:
            _limit_send_buffer(websocket, settings.client_send_buffer)
        client_socket = StarletteClientSocket(websocket)
        direct = UvicornFrameWriter.attach(websocket) if settings.direct_writes else None
        try:
            async with hub.connect(client_socket, direct) as client:
                await self._serve_requests(websocket, hub, client)
        finally:
            if direct is not None and direct.stalled():
                # The connection is over but its unread output would keep it (and the
                # server's graceful shutdown) waiting forever.
                client_socket.abort()

    def _handshake_refusal(self, websocket: WebSocket) -> tuple[int, str] | None:
        """Why this handshake must be refused, or None. CORS does not cover WebSockets:
        a browser sends any page's Origin, so /ws checks it itself, against configured
        values only (never the request's own Host header, which a rebinding page sets)."""
        settings = self.settings
        origin = websocket.headers.get("origin")
        if origin is None:
            if settings.require_origin:
                return 403, "an Origin header is required"
        elif not (settings.any_origin or origin in settings.allowed_origins):
            return 403, "origin not allowed"
        if settings.gateway_token:
            presented = websocket.query_params.get("token", "")
            if not hmac.compare_digest(presented.encode(), settings.gateway_token.encode()):
                return 401, "missing or wrong token"
        return None

    async def _serve_requests(
        self, websocket: WebSocket, hub: Hub, client: ClientConnection
    ) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        budget = TokenBucket(settings.client_message_rate, settings.client_message_burst)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text, data = message.get("text"), message.get("bytes")
            size = _size_in_bytes(text) if text is not None else len(data or b"")
            if size > settings.max_message_size:
                await websocket.close(1009, f"message over {settings.max_message_size} bytes")
                return
            now = loop.time()
            if not budget.allow(now):
                if budget.limited_for(now) > settings.rate_limit_close_after:
                    await websocket.close(1008, "rate limit exceeded")
                    return
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
                self._handle_request(hub, client, text)

    def _handle_request(self, hub: Hub, client: ClientConnection, text: str) -> None:
        try:
            request = protocol.parse_client_message(text)
        except protocol.ProtocolError as exc:
            client.send(protocol.error_message(exc.code, exc.message))
            return
        if request.action == "ping":
            client.send(protocol.PONG)
            return
        symbols, rejected = protocol.split_symbols(request.symbols)
        if rejected:
            client.send(protocol.invalid_symbols_error(rejected))
        if not symbols:
            return
        if request.action == "subscribe":
            hub.subscribe(client, symbols)
        else:
            hub.unsubscribe(client, symbols)


async def _logged(work: Awaitable[None]) -> None:
    """Run a background coroutine; an unexpected crash is logged, not lost."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("background task crashed")
        raise


class JsonLogFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """One line per event, `key=value` text or JSON; configured once, unless the host
    (uvicorn's own log config, pytest) already has handlers."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        if log_format == "json":
            handler.setFormatter(JsonLogFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
            )
        root.addHandler(handler)
        root.setLevel(level)
    for name in ("uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in server_logger.filters):
            server_logger.addFilter(RedactTokens())
    for name in ("gateway", "hub", "finnhub_feed", "simulator"):
        logging.getLogger(name).setLevel(level)


def create_app(settings: Settings | None = None) -> Starlette:
    gateway = Gateway(settings if settings is not None else load_settings())
    app = Starlette(
        routes=[
            Route("/", gateway.root),
            Route("/health", gateway.health),
            Route("/metrics", gateway.metrics),
            Route("/demo", gateway.demo),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/docs", gateway.docs),
            Route("/asyncapi.yaml", gateway.asyncapi),
            WebSocketRoute("/ws", gateway.serve_websocket),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(gateway.settings.frontend_urls),
                allow_methods=["GET"],
                allow_headers=["*"],
            )
        ],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway  # for operators' introspection and in-process tests
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server options we run with; see README "Deploy" for why each is chosen."""
    return {
        "ws": "websockets-sansio",
        # Browsers always offer permessage-deflate; for ~100-byte JSON frames it roughly
        # doubles the CPU per message and turns off the fast path (see BENCHMARKS.md).
        "ws_per_message_deflate": False,
        # Oversized frames are refused by the protocol layer with 1009, before buffering.
        "ws_max_size": settings.max_message_size,
        # Server pings: a client that does not answer in time (half-open TCP) is dropped.
        "ws_ping_interval": settings.heartbeat_interval or None,
        "ws_ping_timeout": settings.heartbeat_timeout or None,
        "proxy_headers": True,
        "timeout_graceful_shutdown": 10,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real-time stock price WebSocket gateway")
    parser.add_argument("--demo", action="store_true", help="use the built-in market simulator")
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    args = parser.parse_args(argv)
    settings = load_settings()
    overrides: dict[str, Any] = {}
    if args.demo:
        overrides["demo"] = True
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if overrides:
        settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    try:
        settings.require_upstream()
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through our handler and format
        **uvicorn_options(settings),
    )
    with suppress(KeyboardInterrupt):
        AnnouncingServer(config).run()
    return 0


class AnnouncingServer(uvicorn.Server):
    """uvicorn, ending its start-up output with where to look."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
            base = f"http://{shown}:{self.config.port}"
            logger.info(
                "streaming on ws://%s:%d/ws; API docs %s/docs", shown, self.config.port, base
            )
            logger.info("open %s/demo to watch prices live", base)


app = create_app()

if __name__ == "__main__":
    sys.exit(main())
