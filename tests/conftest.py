"""Fixtures: the simulator as a scripted Finnhub, the gateway on it under uvicorn, and a
real redis-server. The helpers they use are in tests/helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.helpers import (
    REDIS_SERVER,
    TEST_KEY,
    GatewayUnderTest,
    Market,
    RedisServer,
    free_port,
    run_gateway,
    settings_for,
)


@pytest.fixture
async def market() -> AsyncIterator[Market]:
    """A scripted Finnhub: no automatic trades; tests send them."""
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(simulator) as url:
        yield Market(simulator, url)


@pytest.fixture(params=["fast_path", pytest.param("asgi_sends", marks=pytest.mark.slow)])
async def gateway(
    market: Market, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayUnderTest]:
    """The gateway on the scripted market, with its upstream connected; every test runs
    once with frames written straight to the transport and once through ASGI sends
    (the second run belongs to the slow tier)."""
    settings = settings_for(market, direct_writes=request.param == "fast_path")
    async with run_gateway(settings) as running:
        probe = await running.connect()
        await probe.wait_upstream_connected()
        await probe.ws.close()
        yield running


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("SKIPPED LOUDLY: no redis-server on this machine (.ci/run installs Debian's)")
    server = RedisServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
