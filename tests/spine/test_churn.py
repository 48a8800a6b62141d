"""Concurrent subscribes, unsubscribes and disconnects keep upstream interest exact."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.helpers import Client, GatewayUnderTest, Market, poll_until

pytestmark = pytest.mark.slow

SYMBOLS = [f"SYM{index}" for index in range(12)]


async def churn(gateway: GatewayUnderTest, rng: random.Random) -> None:
    """One client: a burst of random subscribes and unsubscribes, then some way of leaving."""
    client: Client = await gateway.connect()
    for _ in range(rng.randint(1, 6)):
        picked = rng.sample(SYMBOLS, rng.randint(1, 3))
        action = rng.choice(("subscribe", "subscribe", "unsubscribe"))
        await client.send({"action": action, "symbols": picked})  # replies not awaited
    ending = rng.choice(("close", "abort", "stay"))
    if ending == "close":
        await client.ws.close()
    elif ending == "abort":
        transport = client.ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()
    else:
        await client.expect("subscription", skip=("status", "subscription", "price_update"))
        await client.ws.close()


async def test_concurrent_churn_leaves_no_upstream_interest(
    market: Market, gateway: GatewayUnderTest
) -> None:
    rng = random.Random(20261125)
    for _round in range(10):  # 2,000 clients, 200 at a time
        await asyncio.gather(*(churn(gateway, rng) for _ in range(200)))

    async def all_released() -> bool:
        health = await gateway.health()
        return bool(health["clients"] == 0 and health["symbols"] == [])

    await poll_until(all_released, timeout=15)
    await market.simulator.wait_for(lambda: market.simulator.subscribed_symbols() == set())
    # A matching unsubscribe for every subscribe, symbol by symbol.
    for symbol in SYMBOLS:
        subscribes = len(market.simulator.received_of("subscribe", symbol))
        unsubscribes = len(market.simulator.received_of("unsubscribe", symbol))
        assert subscribes == unsubscribes > 0, symbol


async def test_upstream_carries_exactly_what_live_clients_want(
    market: Market, gateway: GatewayUnderTest
) -> None:
    rng = random.Random(7)
    clients = [await gateway.connect() for _ in range(30)]
    wanted: list[set[str]] = [set() for _ in clients]
    for _ in range(200):
        index = rng.randrange(len(clients))
        symbols = rng.sample(SYMBOLS, rng.randint(1, 2))
        if rng.random() < 0.6:
            await clients[index].send({"action": "subscribe", "symbols": symbols})
            wanted[index] |= set(symbols)
        else:
            await clients[index].send({"action": "unsubscribe", "symbols": symbols})
            wanted[index] -= set(symbols)
    # Every client's last reply arriving means all its requests were applied.
    for client in clients:
        await client.send({"action": "ping"})
        await client.expect("pong", skip=("status", "subscription", "price_update"))
    union = set().union(*wanted)
    await market.simulator.wait_for(lambda: market.simulator.subscribed_symbols() == union)
    assert sorted(union) == (await gateway.health())["symbols"]
    closing = [client.ws.close() for client in clients[::2]]
    await asyncio.gather(*closing)
    remaining = set().union(*wanted[1::2])
    await market.simulator.wait_for(lambda: market.simulator.subscribed_symbols() == remaining)
