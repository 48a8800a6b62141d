"""Scale-out on a real Redis: several real gateway processes, one simulated Finnhub."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stock_gateway.simulator.market import MarketSimulator
from tests.support.cluster import (
    LEASE_SECONDS,
    a_follower,
    connect,
    expect_prices,
    gateway_process,
    has_leader,
    health,
    nodes_seen,
    warm_up,
)
from tests.support.helpers import (
    Client,
    Market,
    RedisServer,
    poll_until,
    trade,
)

pytestmark = pytest.mark.slow


async def test_three_processes_share_one_upstream_socket(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with AsyncExitStack() as stack:
        ports = [
            (await stack.enter_async_context(
                gateway_process(tmp_path, upstream, redis_server.url, prefix)
            ))[1]
            for _ in range(3)
        ]  # fmt: skip
        session = await stack.enter_async_context(aiohttp.ClientSession())
        clients = [await connect(session, port) for port in ports]
        for client in clients:
            await client.subscribe("AAPL")
        await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols(), timeout=15)
        await warm_up(simulator, clients, "AAPL")
        await simulator.send_trades([trade("AAPL", 10.0), trade("AAPL", 10.5)])
        await simulator.send_trades([trade("AAPL", 11.0)])
        for client in clients:
            await expect_prices(client, "AAPL", [10.0, 10.5, 11.0])
        assert len(simulator.connections) == 1 and simulator.connection_count == 1
        assert len(simulator.received_of("subscribe", "AAPL")) == 1
        # A first subscriber on a process that never had the symbol gets the last price
        # at once: from Redis, since no other trade is sent.
        early = await connect(session, ports[0])
        await early.subscribe("MSFT")
        await simulator.wait_for(lambda: "MSFT" in simulator.subscribed_symbols(), timeout=15)
        await warm_up(simulator, [early], "MSFT")
        await simulator.send_trades([trade("MSFT", 12.0)])
        await expect_prices(early, "MSFT", [12.0])
        late = await connect(session, ports[1])
        await late.subscribe("MSFT")
        assert (await late.expect("price_update"))["data"]["price"] == 12.0
        roles = sorted([(await health(session, port))["role"] for port in ports])
        assert roles == ["follower", "follower", "leader"]
        views = [await health(session, port) for port in ports]
        assert {view["lease_holder"] for view in views} == {
            view["node"] for view in views if view["role"] == "leader"
        }

        async def everyone_sees_two_symbols() -> bool:
            views = [await health(session, port) for port in ports]
            return all(view["cluster_symbols"] == 2 and view["cluster"] == "ok" for view in views)

        await poll_until(
            everyone_sees_two_symbols, timeout=15
        )  # each view refreshes twice a second
        leaders = 0.0
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            samples = dict(
                line.rsplit(" ", 1)
                for line in text.splitlines()
                if line.startswith(("gateway_cluster", "gateway_upstream_state"))
            )
            # Every process, followers included, reports the upstream as /health does.
            assert float(samples['gateway_upstream_state{state="connected"}']) == 1
            assert float(samples['gateway_upstream_state{state="connecting"}']) == 0
            assert float(samples["gateway_cluster_nodes"]) == 3
            assert float(samples["gateway_cluster_degraded"]) == 0
            leaders += float(samples["gateway_cluster_leader"])
        assert leaders == 1


async def test_follower_interest_reaches_upstream_and_is_released(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        follower = await a_follower(session, [first, second])
        client = await connect(session, follower)
        await client.subscribe("MSFT")
        await simulator.wait_for(lambda: "MSFT" in simulator.subscribed_symbols(), timeout=15)
        await client.ws.close()
        await simulator.wait_for(lambda: bool(simulator.received_of("unsubscribe", "MSFT")), 15)
        assert simulator.subscribed_symbols() == set()


async def test_sigkill_of_the_leader_fails_over(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(
                gateway_process(tmp_path, upstream, redis_server.url, prefix)
            )
            for _ in range(3)
        ]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        ports = [port for _, port in processes]
        await poll_until(lambda: has_leader(session, ports), timeout=15)
        roles = [(await health(session, port))["role"] for port in ports]
        leader = processes[roles.index("leader")]
        survivors = [port for _, port in processes if port != leader[1]]
        on_leader = await connect(session, leader[1])
        await on_leader.subscribe("TSLA")
        survivor_clients = [await connect(session, port) for port in survivors]
        await survivor_clients[0].subscribe("AAPL", "NVDA")
        await survivor_clients[1].subscribe("AAPL")
        await simulator.wait_for(
            lambda: simulator.subscribed_symbols() == {"AAPL", "NVDA", "TSLA"}, timeout=15
        )
        connections_before = simulator.connection_count

        leader[0].process.send_signal(signal.SIGKILL)
        started = asyncio.get_running_loop().time()
        await simulator.wait_for(
            lambda: simulator.connection_count > connections_before, timeout=15
        )
        took_over = asyncio.get_running_loop().time() - started
        assert took_over < LEASE_SECONDS + 2.0, f"failover took {took_over:.1f}s"
        # The union of the survivors: the killed process's TSLA is released.
        await simulator.wait_for(
            lambda: simulator.subscribed_symbols() == {"AAPL", "NVDA"}, timeout=15
        )
        await warm_up(simulator, survivor_clients, "AAPL")
        await simulator.send_trades([trade("AAPL", 20.0)])
        for client in survivor_clients:
            await expect_prices(client, "AAPL", [20.0])
            assert not client.ws.closed
        assert len(simulator.connections) == 1


async def test_redis_restart_mid_stream(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (one, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (two, second),
        aiohttp.ClientSession() as session,
    ):
        clients = [await connect(session, first), await connect(session, second)]
        for client in clients:
            await client.subscribe("AAPL")
        await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols(), timeout=15)
        await warm_up(simulator, clients, "AAPL")

        await redis_server.stop()

        async def degraded() -> bool:
            views = [await health(session, port) for port in (first, second)]
            return all(view["cluster"] == "degraded" for view in views)

        await poll_until(degraded, timeout=15)
        assert all(not client.ws.closed for client in clients)
        await redis_server.start()

        last: list[dict[str, Any]] = []

        async def recovered() -> bool:
            last[:] = [await health(session, port) for port in (first, second)]
            return all(view["cluster"] == "ok" for view in last) and sorted(
                view["role"] for view in last
            ) == ["follower", "leader"]

        try:
            await poll_until(recovered, timeout=20)
        except TimeoutError:
            states = [(v["cluster"], v["role"], v["lease_holder"], v["node"]) for v in last]
            logs = "\n".join(
                line for line in (one.output + two.output).splitlines() if "cluster" in line
            )
            raise AssertionError(f"no recovery after Redis came back: {states}\n{logs}") from None
        await simulator.wait_for(lambda: simulator.subscribed_symbols() == {"AAPL"}, timeout=15)
        await warm_up(simulator, clients, "AAPL")
        await simulator.send_trades([trade("AAPL", 30.0)])
        for client in clients:
            await expect_prices(client, "AAPL", [30.0])
        assert len(simulator.connections) == 1


async def test_uvicorn_workers_behave_as_one_gateway(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix, "--workers", "2") as (
            gateway,
            port,
        ),
        aiohttp.ClientSession() as session,
    ):

        async def both_workers_started() -> bool:
            return gateway.output.count("Application startup complete") == 2

        await poll_until(both_workers_started, timeout=15)
        clients = [await connect(session, port) for _ in range(8)]
        for client in clients:
            await client.subscribe("AAPL")
        await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols(), timeout=15)
        await warm_up(simulator, clients, "AAPL")
        await simulator.send_trades([trade("AAPL", 40.0)])
        for client in clients:
            await expect_prices(client, "AAPL", [40.0])
        assert simulator.connection_count == 1 and len(simulator.connections) == 1
        assert (await health(session, port))["cluster_nodes"] == 2  # both workers joined


async def test_quotes_and_the_market_status_are_fetched_once_for_the_cluster(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    simulator.session = "closed"
    async with AsyncExitStack() as stack:
        ports = [
            (await stack.enter_async_context(
                gateway_process(tmp_path, upstream, redis_server.url, prefix, rest=True)
            ))[1]
            for _ in range(3)
        ]  # fmt: skip
        session = await stack.enter_async_context(aiohttp.ClientSession())
        await poll_until(lambda: has_leader(session, ports), timeout=15)
        clients = [await connect(session, port) for port in ports]
        for client in clients:
            await client.send({"action": "subscribe", "symbols": ["AAPL"]})
        quotes = [await client.expect("quote", skip=("status", "subscription", "market"))
                  for client in clients]  # fmt: skip
        assert {quote["data"]["price"] for quote in quotes} == {
            simulator.book.quote_of("AAPL")["c"]
        }
        assert simulator.rest_calls.of("/quote", "AAPL") == 1  # one call for the cluster
        # Every process tells its clients the session, from the leader's one poll.
        for port in ports:
            late = await connect(session, port)
            market_message = await late.expect("market")
            assert market_message["session"] == "closed"
        assert simulator.rest_calls.of("/stock/market-status") == 1


async def test_options_and_streams_work_on_a_follower(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        follower = await a_follower(session, [first, second])
        batched = Client(await session.ws_connect(f"ws://127.0.0.1:{follower}/ws?batch_ms=50"))
        assert (await batched.receive())["type"] == "connection"
        await batched.expect("options")
        await batched.subscribe("AAPL")
        async with session.get(f"http://127.0.0.1:{follower}/stream?symbols=AAPL") as stream:
            assert stream.status == 200
            await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols(), 15)
            await warm_up_batched(simulator, batched)
            await simulator.send_trades([trade("AAPL", 50.0)])
            while True:
                batch = await batched.expect("price_updates", skip=("status", "market"))
                if batch["updates"][-1]["data"]["price"] == 50.0:
                    break
            async with asyncio.timeout(15):
                while b'"price":50.0' not in await stream.content.readline():
                    pass


async def warm_up_batched(simulator: MarketSimulator, client: Client) -> None:
    """Marker trades until the client's relay delivers one (the follower is subscribed)."""
    async with asyncio.timeout(15):
        while True:
            await simulator.send_trades([trade("AAPL", 1.0)])
            try:
                await client.expect("price_updates", skip=("status", "market"), timeout=0.3)
                return
            except TimeoutError:
                continue


async def test_a_followers_subscribe_reaches_finnhub_at_once(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    """The follower announces its interest on Redis Pub/Sub and the leader re-reads the
    union at once: each subscribe reaches the upstream well inside the leader's 2 s
    safety-net re-read (which alone would need a second on average)."""
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        # Both nodes in the leader's view, so a fresh announcement is all that is missing.
        await poll_until(lambda: nodes_seen(session, [first, second], 2), timeout=15)
        client = await connect(session, await a_follower(session, [first, second]))
        loop = asyncio.get_running_loop()
        took: list[float] = []
        for symbol in ("NVDA", "AMD", "INTC", "TSLA", "META"):
            started = loop.time()
            await client.subscribe(symbol)
            await simulator.wait_for(lambda s=symbol: s in simulator.subscribed_symbols())
            took.append(loop.time() - started)
        assert max(took) < 1.0, took


async def test_a_finnhub_client_on_a_follower_gets_the_leaders_trades_as_sent(
    tmp_path: Path, redis_server: RedisServer, market: Market, prefix: str
) -> None:
    """Finnhub's protocol on a follower: the trades come through Redis (the leader
    publishes each upstream message), read again like upstream data, `c` as sent."""
    simulator, upstream = market.simulator, market.url
    async with (
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, first),
        gateway_process(tmp_path, upstream, redis_server.url, prefix) as (_, second),
        aiohttp.ClientSession() as session,
    ):
        await poll_until(lambda: has_leader(session, [first, second]), timeout=15)
        follower = await a_follower(session, [first, second])
        async with session.ws_connect(f"ws://127.0.0.1:{follower}/") as ws:
            await ws.send_json({"type": "subscribe", "symbol": "AMD"})
            await simulator.wait_for(lambda: "AMD" in simulator.subscribed_symbols(), timeout=15)
            sent = {"s": "AMD", "p": 150.5, "t": trade("AMD", 1.0)["t"], "v": 3, "c": None}
            # The follower's relay may subscribe a moment after the leader carries AMD:
            # send until a frame comes (each send is a whole upstream message).
            async with asyncio.timeout(15):
                while True:
                    await simulator.send_trades([trade("MSFT", 1.0), sent])
                    try:
                        message = await ws.receive_json(timeout=0.5)
                    except TimeoutError:
                        continue
                    if message.get("type") == "trade":
                        break
        assert message == {"type": "trade", "data": [sent]}
        assert simulator.connection_count == 1
