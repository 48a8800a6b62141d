"""The Starlette application: HTTP endpoints, the `/ws` route, the lifespan that owns
every core task, and the command line.

Data flows one way: Finnhub -> `finnhub_feed` -> `Hub` queue -> broadcaster -> each
client's `ClientConnection` -> its socket. This module only builds those parts, hands
them to a `Supervisor`, and routes requests (`/ws` to `client_session`); it never
sends to a client itself and never exposes the Finnhub key.

Run it with `python gateway.py [--demo]`, or `uvicorn gateway:app` with the flags in
README "Deploy".
"""

from __future__ import annotations

import sys

try:
    import uvicorn
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
except ModuleNotFoundError as missing:  # `python3 gateway.py` outside the virtualenv
    sys.exit(
        f"gateway: the package {missing.name!r} is not installed. Run `./dev run` (it sets "
        "up .venv on first use), or `pip install -e .` in this directory first."
    )

import argparse
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

import docs
import metrics
import simulator
from admission import Admission
from client_session import ClientSessions
from cluster import Cluster
from connection_guard import ConnectionGuard, ConnectionLimits
from finnhub_feed import Backoff, FinnhubFeed
from hub import Hub
from logs import configure_logging
from server_protocol import HTTP_IMPORT_PATH, STATE_KEY, WS_IMPORT_PATH
from settings import ConfigError, Settings, load_settings
from supervisor import Supervisor
from upstream import SymbolInterest
from upstream_capacity import SymbolPatterns, UpstreamCapacity

logger = logging.getLogger("gateway")

DEMO_TOKEN = "demo"
STATIC = Path(__file__).with_name("static")


@dataclass
class Running:
    """What exists while the app is up: created and torn down by the lifespan."""

    hub: Hub
    feed: FinnhubFeed
    sessions: ClientSessions
    supervisor: Supervisor
    admission: Admission
    guard: ConnectionGuard
    started_at: float
    cluster: Cluster | None = None


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._running: Running | None = None
        self.metrics_registry, self._handoff_seconds = metrics.create_registry(
            lambda: self._running
        )
        self._docs_page = docs.render_docs(docs.load_asyncapi(), metrics.METRICS)

    @property
    def running(self) -> Running:
        if self._running is None:
            raise RuntimeError("the gateway is not running (lifespan not started)")
        return self._running

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[dict[str, Any]]:
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
                logger.warning(
                    "DEMO MODE: prices are SIMULATED by simulator.py at %s; "
                    "the live page is /demo on this server",
                    url,
                )
            wanted = SymbolInterest()  # what this process's clients want
            feed = FinnhubFeed(
                url,
                key,
                # In cluster mode the feed follows the cluster-wide union instead.
                wanted if not settings.redis_url else SymbolInterest(),
                backoff=Backoff(settings.reconnect_initial_delay, settings.reconnect_max_delay),
                reset_backoff_after=settings.reconnect_reset_after,
                idle_timeout=settings.upstream_idle_timeout,
                handshake_timeout=settings.upstream_handshake_timeout,
                subscribe_rate=settings.upstream_subscribe_rate,
                subscribe_burst=settings.upstream_subscribe_burst,
                trade_max_age=settings.trade_max_age,
                trade_max_ahead=settings.trade_max_ahead,
            )
            capacity = UpstreamCapacity(
                wanted,
                max_symbols=settings.max_upstream_symbols,
                max_per_owner=settings.max_symbols_per_address,
                allowed=SymbolPatterns.from_setting(settings.symbols_allowed),
                linger=settings.symbol_linger_seconds,
                reject_for=settings.rejected_symbol_seconds,
            )
            stack.callback(capacity.close)
            hub = Hub(
                capacity,
                outbox_size=settings.client_outbox_size,
                slow_consumer_timeout=settings.slow_consumer_timeout,
                max_symbols_per_client=settings.max_symbols_per_client,
                handoff_observer=self._handoff_seconds,
            )
            guard = ConnectionGuard(connection_limits(settings))
            logger.info("accepting at most %d open sockets", guard.max_connections)
            supervisor = await stack.enter_async_context(Supervisor())
            cluster = None
            supervisor.start("broadcaster", hub.broadcast_forever)
            if settings.redis_url:
                # The feed runs only while this process holds the lease; trades reach the
                # hub through Redis, already encoded.
                cluster = Cluster(
                    settings.redis_url,
                    wanted,
                    feed,
                    prefix=settings.redis_prefix,
                    lease_seconds=settings.leader_lease_seconds,
                )
                supervisor.start("cluster", lambda: cluster.run(hub))
            else:
                supervisor.start("feed", lambda: feed.run(hub))
            admission = Admission(settings)
            sessions = ClientSessions(settings, hub, admission)
            self._running = Running(
                hub, feed, sessions, supervisor, admission, guard, time.monotonic(), cluster
            )
            try:
                # uvicorn hands this state to every protocol it creates from now on.
                yield {STATE_KEY: guard}
            finally:
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
        down = running.supervisor.down
        body: dict[str, object] = {
            "status": "degraded" if down else "ok",
            "upstream": hub.upstream_state,
            "demo": self.settings.demo,
            "clients": hub.client_count,
            "clients_fast_path": hub.fast_path_count,
            "symbols": hub.symbols(),
            "symbols_lingering": hub.capacity.lingering,
            "upstream_messages_received": feed.messages_received,
            "upstream_trades_received": feed.trades_received,
            "upstream_messages_malformed": feed.malformed_messages,
            "price_updates_sent": hub.stats.price_updates_sent,
            "conflated_updates": hub.stats.conflated_updates,
            "slow_consumer_disconnects": hub.stats.slow_consumer_disconnects,
            "reconnects": feed.reconnects,
            "uptime_seconds": round(time.monotonic() - running.started_at, 3),
            **_cluster_health(running.cluster),
        }
        if down:
            body["down"] = down  # part -> what ended it (an exception's type, never its text)
        return JSONResponse(body, status_code=503 if down else 200)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    async def demo(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "demo.html")

    async def favicon(self, request: Request) -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def docs(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self._docs_page)

    async def asyncapi(self, request: Request) -> Response:
        return Response(docs.ASYNCAPI.read_bytes(), media_type="application/yaml")

    async def websocket(self, websocket: WebSocket) -> None:
        await self.running.sessions.serve(websocket)


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


def create_app(settings: Settings | None = None) -> Starlette:
    gateway = Gateway(settings if settings is not None else load_settings())
    app = Starlette(
        routes=[
            Route("/", gateway.root),
            Route("/health", gateway.health),
            Route("/metrics", gateway.metrics),
            Route("/demo", gateway.demo),
            Route("/favicon.ico", gateway.favicon),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/docs", gateway.docs),
            Route("/asyncapi.yaml", gateway.asyncapi),
            WebSocketRoute("/ws", gateway.websocket),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(gateway.settings.frontend_url),
                allow_methods=["GET"],
                allow_headers=["*"],
            )
        ],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway  # for operators' introspection and in-process tests
    return app


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        handshake_timeout=settings.handshake_timeout,
        max_request_header_bytes=settings.max_request_header_bytes,
        max_connections=settings.max_connections,
        max_pending_per_address=settings.max_pending_per_address,
        frame_rate=settings.client_frame_rate,
        frame_burst=settings.client_frame_burst,
        max_unread_output=settings.max_unread_output,
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server options we run with; see README "Deploy" for why each is chosen."""
    return {
        # Our subclasses of uvicorn's protocols: the limits below the app, the fast path.
        "http": HTTP_IMPORT_PATH,
        "ws": WS_IMPORT_PATH,
        # Browsers always offer permessage-deflate; for ~100-byte JSON frames it roughly
        # doubles the CPU per message and turns off the fast path (see BENCHMARKS.md).
        "ws_per_message_deflate": False,
        # Oversized frames are refused by the protocol layer with 1009, before buffering.
        "ws_max_size": settings.max_message_size,
        # Server pings: a client that does not answer in time (half-open TCP) is dropped.
        "ws_ping_interval": settings.heartbeat_interval or None,
        "ws_ping_timeout": settings.heartbeat_timeout or None,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_graceful_shutdown": 10,
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real-time stock price WebSocket gateway")
    parser.add_argument("--demo", action="store_true", help="use the built-in market simulator")
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.demo:
        overrides["demo"] = True
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
        configure_logging(settings.log_level, settings.log_format)
        settings.require_upstream()
    except ConfigError as exc:
        configure_logging("INFO")
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


def _app_from_environment() -> Starlette:
    """`uvicorn gateway:app` imports this module: a bad setting ends the process with a
    message naming the variable rather than a traceback from deep inside a library."""
    try:
        return create_app()
    except ConfigError as exc:
        configure_logging("INFO")
        logger.error("%s", exc)
        raise SystemExit(2) from None


app = _app_from_environment()

if __name__ == "__main__":
    sys.exit(main())
