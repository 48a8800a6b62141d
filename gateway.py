"""The Starlette application: its routes, the lifespan that owns every part while the
app is up, and the command line.

Data flows one way: Finnhub -> `finnhub_feed` -> a relay -> `Hub` queue -> broadcaster
-> each client's `ClientConnection` -> its socket. The lifespan has `wiring.start` build
those parts and hand their tasks to a `Supervisor`; requests are routed to
`endpoints/ws_session.py` (`/ws`), `endpoints/sse.py` (`/stream`) and
`endpoints/http_api.py` (everything else). This module never sends to a client itself
and never exposes the Finnhub key.

Run it with `stock-gateway [--demo]` (the installed command), `python gateway.py
[--demo]` in the checkout, or `uvicorn gateway:app` with the flags in docs/deploy.md.
"""

from __future__ import annotations

import sys

try:
    import uvicorn
    from starlette.applications import Starlette
except ModuleNotFoundError as missing:  # `python3 gateway.py` outside the virtualenv
    sys.exit(
        f"gateway: the package {missing.name!r} is not installed. Run `./dev run` (it sets "
        "up .venv on first use), or `pip install -e .` in this directory first."
    )

import argparse
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from stock_gateway import wiring
from stock_gateway.access.admission import Admission
from stock_gateway.endpoints import docs, metrics
from stock_gateway.endpoints.finnhub_rest_api import FinnhubRestApi
from stock_gateway.endpoints.http_api import STATIC, HttpApi
from stock_gateway.endpoints.request_rate import RequestRate
from stock_gateway.endpoints.sse import EventStreams
from stock_gateway.protocol import CLOSE_SERVICE_RESTART
from stock_gateway.runtime.logs import ROOT_LOGGER, configure_logging
from stock_gateway.server.guard import STATE_KEY
from stock_gateway.server.uvicorn_protocols import HTTP_IMPORT_PATH
from stock_gateway.server.ws_protocol import WS_IMPORT_PATH
from stock_gateway.setting_sources import env_file_strays, load_settings
from stock_gateway.settings import ConfigError, Settings, documented_defaults

logger = logging.getLogger(ROOT_LOGGER)


class Gateway:
    def __init__(self, settings: Settings, env_file_warnings: Sequence[str] = ()) -> None:
        self.settings = settings
        self.refused: ConfigError | None = None  # why start-up was refused, if it was
        self._env_file_warnings = env_file_warnings  # said once logging is set up
        self._running: wiring.Running | None = None
        self.metrics_registry, self._handoff_seconds = metrics.create_registry(
            lambda: self._running
        )
        defaults = documented_defaults()
        docs_page = docs.render_docs(docs.load_asyncapi(), metrics.METRICS, defaults)
        self.http = HttpApi(settings, lambda: self.running, self.metrics_registry, docs_page)
        self.streams = EventStreams(settings, lambda: self.running)
        self.finnhub_rest = FinnhubRestApi(settings, lambda: self.running)

    @property
    def running(self) -> wiring.Running:
        if self._running is None:
            raise RuntimeError("the gateway is not running (lifespan not started)")
        return self._running

    def admission(self) -> Admission | None:
        """The admission while the app is running (for the middleware), else None."""
        return self._running.admission if self._running is not None else None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[dict[str, Any]]:
        settings = self.settings
        configure_logging(settings.log_level, settings.log_format)
        for warning in self._env_file_warnings:
            logger.warning("%s", warning)
        async with AsyncExitStack() as stack:
            try:
                settings.require_upstream()
                self._running = await wiring.start(settings, stack, self._handoff_seconds)
            except ConfigError as exc:  # said once, in one line (runtime/logs.py)
                self.refused = exc
                logger.error("%s", exc)
                raise
            try:
                # uvicorn hands this state to every protocol it creates from now on.
                yield {STATE_KEY: self._running.guard}
            finally:
                self._running = None

    async def websocket(self, websocket: WebSocket) -> None:
        if self._running is None:  # starting up or shutting down: come back in a moment
            await websocket.close(CLOSE_SERVICE_RESTART, "the gateway is restarting")
            return
        await self._running.sessions.serve(websocket)

    async def finnhub_websocket(self, websocket: WebSocket) -> None:
        """Finnhub's own protocol at `/`, for apps written against Finnhub."""
        if self._running is None:
            await websocket.close(CLOSE_SERVICE_RESTART, "the gateway is restarting")
            return
        await self._running.finnhub_sessions.serve(websocket)


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for `settings`, or for the environment and .env (whose stray keys are
    then warned of at start-up)."""
    gateway = Gateway(settings) if settings else Gateway(load_settings(), env_file_strays())
    http = gateway.http
    app = Starlette(
        routes=[
            Route("/", http.root),
            Route("/health", http.health),
            Route("/metrics", http.metrics),
            Route("/quote/{symbol:path}", http.quote),
            Route("/bars/{symbol:path}", http.bars),
            Route("/api/v1/{path:path}", gateway.finnhub_rest.serve),
            Route("/stream", gateway.streams.stream),
            Route("/demo", http.demo),
            Route("/favicon.ico", http.favicon),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Route("/docs", http.docs),
            Route("/asyncapi.yaml", http.asyncapi),
            WebSocketRoute("/ws", gateway.websocket),
            WebSocketRoute("/", gateway.finnhub_websocket),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(gateway.settings.frontend_url),
                allow_methods=["GET"],
                allow_headers=["*"],
            ),
            Middleware(RequestRate, admission=gateway.admission),
        ],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway  # for operators' introspection and in-process tests
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server options we run with; see docs/deploy.md for why each is chosen."""
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
    parser = argparse.ArgumentParser(
        prog="stock-gateway", description="Real-time stock price WebSocket gateway"
    )
    parser.add_argument("--demo", action="store_true", help="use the built-in market simulator")
    parser.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
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
        for warning in env_file_strays():
            logger.warning("%s", warning)
        settings.require_upstream()
    except ConfigError as exc:
        configure_logging("INFO")
        logger.error("%s", exc)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through our handler and format
        access_log=False,  # a line per handshake is noise at thousands of clients
        **uvicorn_options(settings),
    )
    try:
        with suppress(KeyboardInterrupt):
            AnnouncingServer(config).run()
    except SystemExit:  # uvicorn's own status for a failed start-up
        if app.state.gateway.refused is None:
            raise
    return 2 if app.state.gateway.refused is not None else 0


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
