"""The cluster's REST budget (cluster/rest.py `RedisBudget`) on a real Redis: its window
is the plan's (`FINNHUB_REST_WINDOW`, and the slack), counted on Redis's own clock, not
a fixed minute."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stock_gateway.cluster.link import RedisLink
from stock_gateway.cluster.rest import RedisBudget
from stock_gateway.market_data.provider import UpstreamUnavailable
from tests.support.helpers import RedisServer


async def test_the_clusters_budget_frees_a_slot_once_the_plans_window_has_passed(
    redis_server: RedisServer,
) -> None:
    link = RedisLink(redis_server.url, f"test-{uuid.uuid4().hex[:8]}")
    # A plan of 2 calls in any 1 s, counted 0.5 s longer to be safe.
    budget = RedisBudget(link.client, link.key("rest-calls"), 2, 1.0, slack=0.5)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await budget.acquire(started + 1.0)
        await budget.acquire(started + 1.0)
        with pytest.raises(UpstreamUnavailable):  # the window is full ...
            await budget.acquire(loop.time() + 0.2)
        assert budget.wait_estimate() <= 1.5  # ... until the first call leaves it, not a minute
        await budget.acquire(started + 5.0)
        assert loop.time() - started >= 1.4  # the slack counts too (Redis's ms, rounded)
    finally:
        await link.close()
