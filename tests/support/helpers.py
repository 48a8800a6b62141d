"""Helpers for every test module, in one place: ports, the scripted market, the gateway
in-process under uvicorn or as a subprocess, WebSocket clients, and a real redis-server.

Everything binds and connects on 127.0.0.1 with ports picked by the kernel. Fixtures
that use these live in conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis
import uvicorn

from gateway import Gateway, create_app, uvicorn_options
from hub import Hub
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.settings import Settings, environment_names
from stock_gateway.simulator.market import MarketSimulator, rest_url
from tests.support.contract import assert_server_message

PROJECT = Path(__file__).resolve().parents[2]
TEST_KEY = "fh-test-key-8c1d7e"
RECEIVE_TIMEOUT = 5.0
# A trade time for the tests: when they started, in whole seconds (the gateway skips
# trades stamped days away from now, as a real feed's never are).
T0 = int(time.time()) * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Market:
    simulator: MarketSimulator
    url: str


def settings_for(market: Market, **overrides: Any) -> Settings:
    base = Settings(
        finnhub_api_key=TEST_KEY,
        finnhub_ws_url=market.url,
        finnhub_rest_url=rest_url(market.url),
        host="127.0.0.1",
        port=8000,  # run_gateway binds its own free port; this one is unused
        log_level="DEBUG",
        reconnect_initial_delay=0.02,
        reconnect_max_delay=0.2,
        # Most tests are one local tester opening many clients from 127.0.0.1 and expect
        # symbols to be released at once; the per-address limits and the linger have
        # their own tests (tests/abuse/test_abuse_*.py), which set them explicitly.
        symbol_linger_seconds=0,
        max_symbols_per_address=1000,
        new_symbols_per_address=1_000_000,
        max_connections_per_address=100_000,
        address_handshake_rate=1e6,
        address_handshake_burst=1_000_000,
        http_requests_per_address=1e6,
        http_request_burst=1_000_000,
        # Quotes and market status add messages at their own moments: the tests of the
        # stream's exact order leave them off; tests/market_data/test_market_hours.py turns them on.
        rest_enabled=False,
        # Bars are kept in memory unless a test gives a store (tests/bars/test_bar_store.py).
        bar_store_url="memory://",
    )
    return replace(base, **overrides)


class Client:
    """A WebSocket client of the gateway that reads JSON messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: object) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, f"expected a text frame, got {message}"
        decoded = orjson.loads(message.data)
        assert isinstance(decoded, dict)
        assert_server_message(decoded)  # every message any test sees honours the contract
        return decoded

    async def expect(
        self,
        kind: str,
        *,
        skip: tuple[str, ...] = ("status", "market"),
        timeout: float = RECEIVE_TIMEOUT,
    ) -> dict[str, Any]:
        """The next message of `kind`; only the types in `skip` may come before it."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive()
                if message["type"] == kind:
                    return message
                assert message["type"] in skip, f"expected {kind}, got {message}"

    async def subscribe(self, *symbols: str) -> dict[str, Any]:
        await self.send({"action": "subscribe", "symbols": list(symbols)})
        return await self.expect("subscription")

    async def unsubscribe(self, *symbols: str) -> dict[str, Any]:
        await self.send({"action": "unsubscribe", "symbols": list(symbols)})
        return await self.expect("subscription")

    async def wait_upstream_connected(self) -> None:
        while (await self.expect("status"))["upstream"] != "connected":
            pass


@dataclass
class GatewayUnderTest:
    base_url: str
    ws_url: str
    gateway: Gateway
    session: aiohttp.ClientSession
    server: uvicorn.Server
    _extra_sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    _sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)

    async def connect(self, *, local: str | None = None, **kwargs: Any) -> Client:
        """A client past its `connection` message; from address `local` (127.0.0.x) if
        given, as a distinct client machine would be."""
        session = self.session
        if local is not None:
            connector = aiohttp.TCPConnector(local_addr=(local, 0))
            session = aiohttp.ClientSession(connector=connector)
            self._extra_sessions.append(session)
        ws = await session.ws_connect(self.ws_url, **kwargs)
        self._sockets.append(ws)  # closed when the gateway stops, if the test did not
        client = Client(ws)
        assert (await client.receive())["type"] == "connection"
        return client

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.base_url + path) as response:
            assert response.status == 200
            return await response.json()

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json("/health")
        return result


@asynccontextmanager
async def run_gateway(
    settings: Settings, *, allow_own_origin: bool = False, port: int = 0, **server_options: Any
) -> AsyncIterator[GatewayUnderTest]:
    """The real app under a real uvicorn server on a loopback port (free unless given;
    with `allow_own_origin` it is added to the allowed origins, for pages it serves)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts on one port
    listener.bind(("127.0.0.1", port))
    port = listener.getsockname()[1]
    if allow_own_origin:
        own = f"http://127.0.0.1:{port}"
        settings = replace(settings, frontend_url=(*settings.frontend_url, own))
    app = create_app(settings)
    options = {**uvicorn_options(settings), **server_options}
    config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="debug", **options)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(_serve(server, listener))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not serving.done(), "the gateway failed to start"
                await asyncio.sleep(0.005)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            running = GatewayUnderTest(
                f"http://127.0.0.1:{port}",
                f"ws://127.0.0.1:{port}/ws",
                app.state.gateway,
                session,
                server,
            )
            try:
                yield running
            finally:
                # A client socket left open and unread when its session closes is a
                # connection aiohttp never released: it warns when collected, in
                # whichever later test that happens. Close them while the server runs.
                for ws in running._sockets:
                    with suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                        async with asyncio.timeout(1):
                            await ws.close()
                for extra in running._extra_sessions:
                    await extra.close()
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
    """`server.serve()` without its signal handlers and its 0.1 s main-loop tick: a test
    gateway stops within a few milliseconds of `should_exit`, not a tenth of a second
    (hundreds of gateways per run)."""
    config = server.config
    if not config.loaded:
        config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[listener])
    if not server.started:
        return
    while not server.should_exit:  # noqa: ASYNC110 - uvicorn's flag has no event
        await asyncio.sleep(0.005)
    await _shutdown(server, listener)


async def _shutdown(server: uvicorn.Server, listener: socket.socket) -> None:
    """uvicorn's `Server.shutdown` in its order (stop listening, ask every connection to
    close, wait for them, then the lifespan's shutdown), polling every few milliseconds
    where uvicorn sleeps a fixed tenth of a second: a test gateway stops at once."""
    for running in server.servers:
        running.close()
    listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    try:
        async with asyncio.timeout(server.config.timeout_graceful_shutdown or 10):
            while server.server_state.connections or server.server_state.tasks:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:  # as uvicorn does past its graceful timeout
        for task in server.server_state.tasks:
            task.cancel()
    for running in server.servers:
        await running.wait_closed()
    await server.lifespan.shutdown()


async def poll_until(
    check: Callable[[], Awaitable[bool]], timeout: float = RECEIVE_TIMEOUT
) -> None:
    """Wait for server state seen only from outside (e.g. /health), which has no event."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - an HTTP endpoint has no event
            await asyncio.sleep(0.02)


def trade(symbol: str, price: float, *, volume: float = 100, timestamp: int = T0) -> dict[str, Any]:
    return {"s": symbol, "p": price, "t": timestamp, "v": volume, "c": ["1"]}


def without_gap(bar: dict[str, Any]) -> dict[str, Any]:
    """A bar's candle fields: whether its interval overlapped the gateway's start-up (the
    `gap` flag) depends on when in the interval the test began (tests/bars/test_bar_gaps.py)."""
    assert isinstance(bar["gap"], bool)
    return {name: value for name, value in bar.items() if name != "gap"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any gateway configuration the developer may have set."""
    names = set(environment_names())
    env = {key: value for key, value in os.environ.items() if key not in names}
    env.update(extra)
    return env


async def run_to_exit(*args: str, cwd: Path, **env: str) -> tuple[int, str]:
    """Run a command to its end with a clean environment plus `env`; (status, output)."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
    finally:  # one that never ends (a setting it should have refused) is ended here
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


class GatewayProcess:
    """A gateway subprocess whose output is read continuously (a full pipe would stall it)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Condition()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def collect_output(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            async with self._changed:
                self.lines.append(line.decode())
                self._changed.notify_all()
        async with self._changed:
            self.lines.append("<exited>")
            self._changed.notify_all()

    async def wait_for_output(self, needle: str, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: needle in self.output or "<exited>" in self.lines)
        assert needle in self.output, "the gateway exited early:\n" + self.output

    async def terminate(self) -> int:
        """SIGTERM, then the exit status once the process and its output have ended."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await self.wait_for_output("<exited>")
            return await self.process.wait()


@asynccontextmanager
async def gateway_subprocess(
    tmp_path: Path, port: int, command: tuple[str, ...], env: dict[str, str]
) -> AsyncIterator[GatewayProcess]:
    """Run a gateway command on 127.0.0.1:`port`; yields once it accepts connections,
    and on the way out insists that SIGTERM ends it (showing its output if not)."""
    process = await asyncio.create_subprocess_exec(
        *command, "--host", "127.0.0.1", "--port", str(port),
        cwd=tmp_path, env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    gateway = GatewayProcess(process)
    collector = asyncio.create_task(gateway.collect_output())
    try:
        await gateway.wait_for_output("Uvicorn running on")
        yield gateway
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError("no exit on SIGTERM:\n" + gateway.output[-3000:]) from None
        finally:
            collector.cancel()
            await asyncio.wait([collector])


REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert REDIS_SERVER is not None, "no redis-server on this machine"
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except (redis.ConnectionError, OSError):
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def assert_hub_consistent(hub: Hub) -> None:
    """The hub's maps agree with every client's own symbols and with the upstream
    interest (O(clients x symbols): for tests)."""
    expected: dict[str, set[ClientConnection]] = {}
    for client in hub.clients:
        for symbol in client.symbols:
            expected.setdefault(symbol, set()).add(client)
    # hub.symbols(): every symbol held, for prices or bars (the public view of its map).
    actual = {symbol: set(hub.subscribers_of(symbol)) for symbol in hub.symbols()}
    actual = {symbol: clients for symbol, clients in actual.items() if clients}
    assert expected == actual, "hub subscriber map disagrees with its clients' symbols"
    bars = set(hub.bars.symbols()) if hub.bars is not None else set()
    assert set(hub.symbols()) == expected.keys() | bars, "a symbol nobody holds in the hub"
    wanted = set(hub.symbols()) | set(hub.capacity.lingering)
    assert wanted == hub.interest.symbols, "hub subscriber map disagrees with the interest"
