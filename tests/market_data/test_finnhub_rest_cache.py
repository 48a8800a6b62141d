"""The REST mirror's answers cache: bounded in bytes in one process, and on a cluster
shared through a real Redis (bounded there too), so two gateways make one call."""

from __future__ import annotations

import uuid

import redis.asyncio as redis

from stock_gateway.cluster.link import RedisLink
from stock_gateway.cluster.rest import RedisResponseCache
from stock_gateway.market_data.rest_mirror import MemoryResponseCache, cache_key
from stock_gateway.simulator.reference_data import profile2
from tests.support.helpers import Market, RedisServer, run_gateway, settings_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_memory_cache_is_bounded_in_bytes_and_forgets_what_expired() -> None:
    clock = Clock()
    cache = MemoryResponseCache(100, clock)
    await cache.put("a", b"x" * 39, 60)  # 40 bytes with its key
    await cache.put("b", b"y" * 39, 60)
    assert await cache.get("a") == b"x" * 39  # used: "b" is now the least recently used
    await cache.put("c", b"z" * 39, 60)
    assert cache.held <= 100
    assert await cache.get("b") is None and await cache.get("a") is not None
    await cache.put("huge", b"h" * 200, 60)  # larger than the whole bound: not kept
    assert await cache.get("huge") is None and await cache.get("c") is not None
    clock.now += 61
    assert await cache.get("a") is None
    await cache.put("d", b"d", 5)  # expired answers go first, whatever their use
    assert cache.held == 2


def test_the_cache_key_ignores_the_order_of_parameters() -> None:
    assert cache_key("news", [("b", "2"), ("a", "1")]) == cache_key(
        "news", [("a", "1"), ("b", "2")]
    )
    assert cache_key("news", [("a", "1")]) != cache_key("company-news", [("a", "1")])


async def test_the_clusters_cache_is_bounded_in_bytes(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, f"test-{uuid.uuid4().hex[:8]}")
    cache = RedisResponseCache(link.client, link.key, 1000)
    try:
        for index in range(30):
            await cache.put(f"stock/profile2?symbol=S{index}", b"p" * 100, 3600 + index)
        assert await cache.get("stock/profile2?symbol=S29") == b"p" * 100
        assert await cache.get("stock/profile2?symbol=S0") is None  # evicted: closest to expiry
        client: redis.Redis = link.client()
        total = int(await client.get(link.key("rest-answer-bytes")) or 0)
        stored = [k async for k in client.scan_iter(match=link.key("rest-answer", "*"))]
        assert total <= 1000 and len(stored) == total // 100 == 10
        await cache.put("too-big", b"b" * 1001, 60)
        assert await cache.get("too-big") is None
    finally:
        await link.close()


async def test_two_gateways_of_a_cluster_share_answers(
    redis_server: RedisServer, market: Market
) -> None:
    settings = settings_for(
        market,
        rest_enabled=True,
        redis_url=redis_server.url,
        redis_prefix=f"test-{uuid.uuid4().hex[:8]}",
    )
    path = "/api/v1/stock/profile2?symbol=AAPL"
    async with run_gateway(settings) as first, run_gateway(settings) as second:
        for gateway in (first, second, second):
            assert await gateway.get_json(path) == profile2({"symbol": "AAPL"})
        assert (await second.health())["finnhub_rest"]["cache_hits"] == 2
    assert sum(1 for entry in market.simulator.rest_calls.log if entry[1] == "/stock/profile2") == 1
