"""Fixtures: the simulator as a scripted Finnhub, the gateway on it under uvicorn, and a
real redis-server. The helpers they use are in tests/support/helpers.py."""

from __future__ import annotations

import re
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import (
    PROJECT,
    REDIS_SERVER,
    TEST_KEY,
    GatewayUnderTest,
    Market,
    RedisServer,
    free_port,
    run_gateway,
    settings_for,
)
from tests.support.postgres_server import PostgresServer, postgres_bin

# The tiers' documented durations, checked under CI (tests/support/tier_durations.py).
pytest_plugins = ["tests.support.tier_durations"]


# Tests that assert rates, latencies or memory while the gateway is under attack: under
# xdist they share one group, so no two of them ever run at once (each spawns its own
# CPU-hungry attackers); see docs/testing.md.
TIMING_MODULES = ("test_abuse_", "test_bench_smoke")


# A module marked slow as a whole (`pytestmark = ... slow ...` at its top level).
_WHOLLY_SLOW = re.compile(r"^pytestmark = .*\bslow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier (`-m "not slow"`) does not even import a module that is slow as a
    whole: every test in it would be deselected, and importing them (hypothesis,
    the browser's and the cluster's helpers) cost each worker seconds."""
    if config.getoption("markexpr") != "not slow" or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix == ".py" and _WHOLLY_SLOW.search(collection_path.read_text()):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith(TIMING_MODULES) or item.get_closest_marker("timing"):
            item.add_marker(pytest.mark.xdist_group("timing"))


def _fingerprint(data: Path) -> dict[str, tuple[int, int]]:
    """Every file under `data`, with its size and modification time."""
    if not data.is_dir():
        return {}
    return {
        str(path.relative_to(data)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(data.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session", autouse=True)
def the_checkouts_data_is_left_alone() -> Iterator[None]:
    """The checkout's data/ is the user's (their candle store): no gateway a test starts
    may write there. (A gateway of your own running from this checkout meanwhile would
    trip this too.)"""
    data = PROJECT / "data"
    before = _fingerprint(data)
    yield
    after = _fingerprint(data)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    assert not changed, f"the suite wrote into the checkout's data/: {changed}"


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
def prefix() -> str:
    """A Redis key prefix of the test's own: cluster tests share no keys."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_postgres() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server started once per session (per xdist worker): tests
    share it, each in a database of its own (`postgres`)."""
    if postgres_bin() is None:
        message = "NO POSTGRESQL SERVER BINARIES: the PostgreSQL bar store is NOT TESTED"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="bars-pg-") as root:
        server = PostgresServer(Path(root))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def postgres(shared_postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database of the test's own on the session's server."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(shared_postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return shared_postgres.url.rsplit("/", 1)[0] + "/" + name


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
