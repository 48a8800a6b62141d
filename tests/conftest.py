"""Real parts for the tests: the simulator as Finnhub, the gateway under uvicorn, and
real WebSocket clients, all on 127.0.0.1 with ports picked by the kernel."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson
import pytest
import uvicorn

from gateway import Gateway, create_app, uvicorn_options
from settings import Settings
from simulator import MarketSimulator, serve
from tests.contract import assert_server_message

TEST_KEY = "fh-test-key-8c1d7e"
RECEIVE_TIMEOUT = 5.0


@dataclass
class Market:
    simulator: MarketSimulator
    url: str


@pytest.fixture
async def market() -> AsyncIterator[Market]:
    """A scripted Finnhub: no automatic trades; tests send them."""
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(simulator) as url:
        yield Market(simulator, url)


def settings_for(market: Market, **overrides: Any) -> Settings:
    base = Settings(
        finnhub_api_key=TEST_KEY,
        finnhub_ws_url=market.url,
        host="127.0.0.1",
        port=0,
        log_level="DEBUG",
        reconnect_initial_delay=0.02,
        reconnect_max_delay=0.2,
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
        self, kind: str, *, skip: tuple[str, ...] = ("status",), timeout: float = RECEIVE_TIMEOUT
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

    async def connect(self, **kwargs: Any) -> Client:
        ws = await self.session.ws_connect(self.ws_url, **kwargs)
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
        settings = replace(settings, frontend_urls=(*settings.frontend_urls, own))
    app = create_app(settings)
    options = {**uvicorn_options(settings), **server_options}
    config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="debug", **options)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                assert not serving.done(), "the gateway failed to start"
                await asyncio.sleep(0.01)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield GatewayUnderTest(
                f"http://127.0.0.1:{port}",
                f"ws://127.0.0.1:{port}/ws",
                app.state.gateway,
                session,
                server,
            )
    finally:
        server.should_exit = True
        await serving
        listener.close()


@pytest.fixture(params=["fast_path", "asgi_sends"])
async def gateway(
    market: Market, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayUnderTest]:
    """The gateway on the scripted market, with its upstream connected; every test runs
    once with frames written straight to the transport and once through ASGI sends."""
    settings = settings_for(market, direct_writes=request.param == "fast_path")
    async with run_gateway(settings) as running:
        probe = await running.connect()
        await probe.wait_upstream_connected()
        await probe.ws.close()
        yield running


async def poll_until(
    check: Callable[[], Awaitable[bool]], timeout: float = RECEIVE_TIMEOUT
) -> None:
    """Wait for server state seen only from outside (e.g. /health), which has no event."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - an HTTP endpoint has no event
            await asyncio.sleep(0.02)


def trade(
    symbol: str, price: float, *, volume: float = 100, timestamp: int = 1_700_000_000_000
) -> dict[str, Any]:
    return {"s": symbol, "p": price, "t": timestamp, "v": volume, "c": ["1"]}
