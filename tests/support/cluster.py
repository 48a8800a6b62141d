"""Helpers of the cluster tests: cluster-mode gateway processes on one Redis, their
/health and clients, waiting for a leader and finding a follower."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from stock_gateway.server.uvicorn_protocols import HTTP_IMPORT_PATH
from stock_gateway.simulator.market import MarketSimulator, rest_url
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    Client,
    GatewayProcess,
    Market,
    free_port,
    gateway_subprocess,
    trade,
)

LEASE_SECONDS = 1.5


@asynccontextmanager
async def gateway_process(
    tmp_path: Path,
    upstream: str,
    redis_url: str,
    prefix: str,
    *extra: str,
    rest: bool = False,
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[GatewayProcess, int]]:
    """One cluster-mode gateway process (uvicorn as deployed) on a free port; quotes and
    market status (REST) only when asked, as they add messages at their own moments;
    `env` adds to (or overrides) its environment."""
    port = free_port()
    command = (
        sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app",
        "--http", HTTP_IMPORT_PATH, *extra,
    )  # fmt: skip
    settings = {
        "FINNHUB_WS_URL": upstream,
        "FINNHUB_REST_URL": rest_url(upstream),
        "FINNHUB_API_KEY": TEST_KEY,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "LEADER_LEASE_SECONDS": str(LEASE_SECONDS),
        "SYMBOL_LINGER_SECONDS": "0",  # releases are checked at once (linger: test_abuse_*)
        "LOG_LEVEL": "INFO",
        "REST_ENABLED": "true" if rest else "false",
    }
    async with gateway_subprocess(tmp_path, port, command, settings | (env or {})) as gateway:
        yield gateway, port


async def health(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/health") as response:
        result: dict[str, Any] = await response.json()
        return result


async def connect(session: aiohttp.ClientSession, port: int) -> Client:
    client = Client(await session.ws_connect(f"ws://127.0.0.1:{port}/ws"))
    assert (await client.receive())["type"] == "connection"
    return client


async def warm_up(simulator: MarketSimulator, clients: list[Client], symbol: str) -> None:
    """Send a marker trade until every client has one: every relay is subscribed."""
    waiting = list(clients)
    async with asyncio.timeout(15):
        while waiting:
            await simulator.send_trades([trade(symbol, 1.0)])
            still = []
            for client in waiting:
                try:
                    async with asyncio.timeout(0.3):
                        await client.expect("price_update", skip=("status", "subscription"))
                except TimeoutError:
                    still.append(client)
            waiting = still


async def expect_prices(client: Client, symbol: str, prices: list[float]) -> None:
    """The next updates for `symbol` after any warm-up markers are exactly `prices`."""
    received: list[float] = []
    while len(received) < len(prices):
        update = await client.expect("price_update", skip=("status", "subscription"))
        if update["symbol"] == symbol and update["data"]["price"] != 1.0:
            received.append(update["data"]["price"])
    assert received == prices


async def has_leader(session: aiohttp.ClientSession, ports: list[int]) -> bool:
    return any([(await health(session, port))["role"] == "leader" for port in ports])


async def a_follower(session: aiohttp.ClientSession, ports: list[int]) -> int:
    for port in ports:
        if (await health(session, port))["role"] == "follower":
            return port
    raise AssertionError("no follower")


async def nodes_seen(session: aiohttp.ClientSession, ports: list[int], nodes: int) -> bool:
    return all([(await health(session, port))["cluster_nodes"] == nodes for port in ports])


async def subscribe_bars(client: Client, symbol: str, interval: str) -> list[dict[str, Any]]:
    await client.send({"action": "subscribe_bars", "symbols": [symbol], "interval": interval})
    assert (await client.expect("subscription"))["interval"] == interval
    history: list[dict[str, Any]] = (await client.expect("bars"))["bars"]
    return history


async def bar_with(client: Client, start: int, trades: int, timeout: float = 15) -> dict[str, Any]:
    """The next `bar` message for the bar starting at `start` once it counts `trades`."""
    async with asyncio.timeout(timeout):
        while True:
            message = await client.expect("bar", skip=("status", "market", "bar"))
            if message["bar"]["t"] == start and message["bar"]["n"] >= trades:
                return message


async def carried(market: Market, symbol: str) -> None:
    await market.simulator.wait_for(lambda: symbol in market.simulator.subscribed_symbols(), 15)
