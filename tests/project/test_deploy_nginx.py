"""deploy/nginx.conf, the compose file's proxy, run as it is by Debian's nginx in front
of a real gateway (the Dockerfile's command, on the simulator), only the upstream's
address and the listen port changed: every path a client of the deployment uses works
through it (the gateway's WebSocket, Finnhub's WebSocket at `/` with Finnhub's own
`websocket-client`, Finnhub's REST, Server-Sent Events unbuffered, /health), /metrics
stays private, and the gateway sees each client's own address."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websocket
from yarl import URL

from stock_gateway.simulator.market import MarketSimulator, rest_url, serve
from tests.support.deploy_files import dockerfile_instruction, nginx_config
from tests.support.helpers import (
    T0,
    TEST_KEY,
    Client,
    RedisServer,
    free_port,
    gateway_subprocess,
    trade,
)

pytestmark = pytest.mark.slow

NGINX = next(
    (path for path in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.access(path, os.X_OK)), None
)
TIMEOUT = 10.0
# A first event must come at once: nginx buffering it would hold it until its buffer
# filled or the stream ended, that is for ever here.
FIRST_EVENT_TIMEOUT = 2.0


@dataclass
class Deployment:
    simulator: MarketSimulator
    public: str  # http://127.0.0.1:port, nginx
    direct: str  # the gateway itself, as Prometheus scrapes it on the compose network
    session: aiohttp.ClientSession

    @property
    def ws_url(self) -> str:
        return self.public.replace("http://", "ws://", 1)

    async def wait_subscribed(self, symbol: str) -> None:
        await self.simulator.wait_for(
            lambda: symbol in self.simulator.subscribed_symbols(), TIMEOUT
        )


def main_config(tmp_path: Path, listen_port: int, gateway_ports: list[int]) -> str:
    """deploy/nginx.conf verbatim inside a minimal main configuration, with the compose
    network's upstream (one name for every replica) and port swapped for the test's."""
    site = nginx_config()
    replicas = " ".join(f"server 127.0.0.1:{port};" for port in gateway_ports)
    for compose_value, local_value in (
        ("server gateway:8000;", replicas),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
    ):
        assert site.count(compose_value) == 1, compose_value
        site = site.replace(compose_value, local_value)
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return "\n".join(
        [
            # Workers run as this user: they must reach the temporary paths in tmp_path.
            "user root;" if os.geteuid() == 0 else "",
            "daemon off;",
            "worker_processes 1;",
            f"pid {tmp_path / 'nginx.pid'};",
            f"error_log {tmp_path / 'error.log'} info;",
            "events { worker_connections 256; }",
            "http {",
            f"access_log {tmp_path / 'access.log'};",
            *(f"{name}_temp_path {path};" for name, path in temp.items()),
            site,
            "}",
        ]
    )


async def wait_listening(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    """Until nginx accepts connections (it says so nowhere else); fails if it exits."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if process.returncode is not None:
                raise AssertionError("nginx exited:\n" + await asyncio.to_thread(log.read_text))
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return


@asynccontextmanager
async def nginx_in_front_of(tmp_path: Path, *gateway_ports: int) -> AsyncIterator[str]:
    if NGINX is None:
        pytest.skip("SKIPPED LOUDLY: no nginx on this machine (.ci/run installs Debian's)")
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(main_config(tmp_path, port, list(gateway_ports)))
    log = tmp_path / "error.log"
    process = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(tmp_path), "-c", str(config), "-e", str(log),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_listening(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            await process.wait()


def container_command() -> tuple[str, ...]:
    """The Dockerfile's CMD as the compose file's replicas run it (the installed command;
    gateway_subprocess adds the loopback address and port)."""
    command = json.loads(dockerfile_instruction("CMD"))
    return (str(Path(sys.executable).parent / command[0]), *command[1:])


@asynccontextmanager
async def deployed(tmp_path: Path, **env: str) -> AsyncIterator[Deployment]:
    """The simulator, one gateway started with the Dockerfile's command, and nginx."""
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(simulator) as url:
        gateway_port = free_port()
        runnable = container_command()
        settings = {
            "FINNHUB_API_KEY": TEST_KEY,
            "FINNHUB_WS_URL": url,
            "FINNHUB_REST_URL": rest_url(url),
            "BAR_STORE_URL": "memory://",
            "FORWARDED_ALLOW_IPS": "127.0.0.1",  # nginx's address, as in the compose file
            **env,
        }
        async with (
            gateway_subprocess(tmp_path, gateway_port, runnable, settings),
            nginx_in_front_of(tmp_path, gateway_port) as public,
            aiohttp.ClientSession() as session,
        ):
            yield Deployment(simulator, public, f"http://127.0.0.1:{gateway_port}", session)


async def get(deployment: Deployment, url: str | URL) -> tuple[int, str]:
    async with deployment.session.get(url) as response:
        return response.status, await response.text()


async def test_the_gateways_websocket_rest_and_health_work_through_nginx(tmp_path: Path) -> None:
    async with deployed(tmp_path) as deployment:
        async with deployment.session.ws_connect(deployment.ws_url + "/ws") as ws:
            client = Client(ws)
            assert (await client.receive())["type"] == "connection"
            await client.subscribe("AAPL")
            await deployment.wait_subscribed("AAPL")
            await deployment.simulator.send_trades([trade("AAPL", 191.25)])
            update = await client.expect("price_update", skip=("status", "market", "quote"))
            assert update["symbol"] == "AAPL" and update["data"]["price"] == 191.25
        status, body = await get(
            deployment, deployment.public + "/api/v1/quote?symbol=AAPL&token=x"
        )
        assert status == 200, body
        quote = json.loads(body)
        assert set(quote) >= {"c", "d", "dp", "h", "l", "o", "pc", "t"} and quote["c"] > 0
        status, body = await get(deployment, deployment.public + "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"


async def test_metrics_are_refused_through_nginx_and_served_to_the_scraper(tmp_path: Path) -> None:
    async with deployed(tmp_path) as deployment:
        status, body = await get(deployment, deployment.direct + "/metrics")
        assert status == 200 and "gateway_clients" in body
        public = deployment.public
        for path in ("/metrics", "/metrics/", "//metrics", "/%6Detrics", "/metrics?format=x"):
            status, body = await get(deployment, URL(public + path, encoded=True))
            assert status == 404, path
            assert "gateway_" not in body, path
        status, body = await get(deployment, public + "/")  # what is not /metrics still is
        assert status == 200, body


def finnhub_example_connect(url: str) -> websocket.WebSocket:
    """Finnhub's Python example connects like this (websocket-client: it sends an Origin
    naming the host it connects to), and subscribes."""
    ws = websocket.create_connection(url, timeout=TIMEOUT)
    ws.send(json.dumps({"type": "subscribe", "symbol": "AAPL"}))
    return ws


def finnhub_next_trade(ws: websocket.WebSocket) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv())
        if message["type"] != "ping":
            return message


async def test_finnhubs_websocket_client_example_gets_trades_through_nginx(tmp_path: Path) -> None:
    async with deployed(tmp_path) as deployment:
        url = deployment.ws_url + "/?token=my-own-finnhub-key"
        ws = await asyncio.to_thread(finnhub_example_connect, url)
        try:
            await deployment.wait_subscribed("AAPL")
            sent = {"s": "AAPL", "p": 189.5, "t": T0, "v": 100, "c": ["1", "12"]}
            await deployment.simulator.send_trades([sent])
            message = await asyncio.to_thread(finnhub_next_trade, ws)
        finally:
            await asyncio.to_thread(ws.close)
        assert message == {"type": "trade", "data": [sent]}


async def test_server_sent_events_pass_through_nginx_unbuffered(tmp_path: Path) -> None:
    async with (
        deployed(tmp_path) as deployment,
        deployment.session.get(deployment.public + "/stream?symbols=AAPL") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(FIRST_EVENT_TIMEOUT):
            first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"event: connection\n"), first
        await deployment.wait_subscribed("AAPL")
        await deployment.simulator.send_trades([trade("AAPL", 190.5)])
        async with asyncio.timeout(FIRST_EVENT_TIMEOUT):
            while not (event := await response.content.readuntil(b"\n\n")).startswith(
                b"event: price_update\n"
            ):
                pass
        assert b'"price":190.5' in event


Opened = tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]


async def open_ws(deployment: Deployment, local: str) -> Opened | int:
    """A /ws connection from the loopback address `local`, or the handshake's status."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))
    try:
        return session, await session.ws_connect(deployment.ws_url + "/ws")
    except aiohttp.WSServerHandshakeError as refused:
        await session.close()
        return refused.status


async def test_the_gateway_counts_each_client_behind_nginx_apart(tmp_path: Path) -> None:
    """Both clients reach the gateway from nginx's one address; only X-Forwarded-For
    tells them apart: one connection each is allowed, a second from one is refused."""
    async with deployed(tmp_path, MAX_CONNECTIONS_PER_ADDRESS="1") as deployment:
        opened: list[Opened] = []
        try:
            first = await open_ws(deployment, "127.0.0.2")
            assert not isinstance(first, int), first
            opened.append(first)
            assert (await first[1].receive_json(timeout=TIMEOUT))["type"] == "connection"
            other = await open_ws(deployment, "127.0.0.3")
            assert not isinstance(other, int), f"127.0.0.3 refused ({other}): counted as .2"
            opened.append(other)
            again = await open_ws(deployment, "127.0.0.2")
            if not isinstance(again, int):
                opened.append(again)
            assert again == 429, "a second connection from 127.0.0.2 was let in"
        finally:
            for session, ws in opened:
                await ws.close()
                await session.close()


async def test_demo_replicas_on_redis_serve_every_client_through_nginx(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The compose file keyless: DEMO=true on a cluster. Each replica has a simulator of
    its own, but only the leader streams from it; the other gets its prices through
    Redis. nginx spreads two clients over the two replicas, and both get prices."""
    ports = [free_port(), free_port()]
    env = {
        "DEMO": "true",
        "DEMO_TRADE_RATE": "200",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"deploy-{uuid.uuid4().hex[:8]}",
        "BAR_STORE_URL": "memory://",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    async with (
        gateway_subprocess(tmp_path, ports[0], container_command(), env),
        gateway_subprocess(tmp_path, ports[1], container_command(), env),
        nginx_in_front_of(tmp_path, *ports) as public,
        aiohttp.ClientSession() as session,
    ):
        ws_url = public.replace("http://", "ws://", 1) + "/ws"
        async with session.ws_connect(ws_url) as first, session.ws_connect(ws_url) as second:
            for ws in (first, second):
                client = Client(ws)
                assert (await client.receive())["type"] == "connection"
                await client.subscribe("AAPL")
                await client.expect(
                    "price_update", skip=("status", "market", "quote"), timeout=TIMEOUT
                )
            healths = []
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    healths.append(await response.json())
        assert [health["clients"] for health in healths] == [1, 1]  # nginx's round robin
        assert all(health["demo"] is True for health in healths)
