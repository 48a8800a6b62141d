"""Two addresses cannot spend the whole REST budget: one-off lookups and forwarded calls
have shares that add up to less than the usable rate (rest_shares.py), one
address has at most a third of the forwarded share, and the quotes of symbols clients
hold keep the rest. Against the real gateway and the simulator's REST side enforcing
the plan."""

from __future__ import annotations

import asyncio
import itertools
import math

import aiohttp
import pytest

from bench.spend_attacks import HELD, spend
from stock_gateway.rest_shares import rest_shares
from stock_gateway.settings import ConfigError, Settings
from tests.support.helpers import Client, Market, run_gateway, settings_for

PLAN = 30  # calls a minute: the gateway allows itself 29


async def quotes_for(client: Client, symbols: list[str]) -> dict[str, float]:
    """The `quote` of each symbol (a `quote_unavailable` error fails the test)."""
    got: dict[str, float] = {}
    while set(got) != set(symbols):
        message = await client.expect("quote", skip=("status", "market", "subscription"))
        got[message["symbol"]] = message["data"]["price"]
    return got


@pytest.mark.slow  # REST shares spent at their real rate
async def test_two_addresses_spending_lookups_and_forwarded_calls_leave_a_third_its_share(
    market: Market,
) -> None:
    market.simulator.rest_rate = PLAN  # Finnhub refuses past the plan too
    settings = settings_for(market, rest_enabled=True, finnhub_rest_rate=PLAN)
    log = market.simulator.rest_calls.log
    async with run_gateway(settings) as gateway:
        serial = itertools.count()
        refused = [{"quote": asyncio.Event(), "api": asyncio.Event()} for _ in range(2)]
        attackers = [
            asyncio.create_task(spend(gateway.base_url, address, serial, spent))
            for address, spent in zip(("127.0.0.3", "127.0.0.4"), refused, strict=True)
        ]
        try:
            # Both attackers have spent all they may of both (their calls on their way).
            async with asyncio.timeout(10):
                for event in [event for spent in refused for event in spent.values()]:
                    await event.wait()
            third = await gateway.connect(local="127.0.0.5")
            await third.send({"action": "subscribe", "symbols": HELD})
            async with asyncio.timeout(settings.quote_wait + 5):
                assert set(await quotes_for(third, HELD)) == set(HELD)
            # Its own forwarded calls: every one its address may make is forwarded.
            allowance = math.floor(rest_shares(settings).forwarded_per_address)
            assert allowance >= 3
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.5", 0))
            async with aiohttp.ClientSession(connector=connector) as session:
                statuses = []
                for n in range(allowance):
                    path = f"/api/v1/stock/profile2?symbol={HELD[n]}"
                    async with session.get(gateway.base_url + path) as response:
                        statuses.append(response.status)
            assert statuses == [200] * allowance
        finally:
            for attacker in attackers:
                attacker.cancel()
            await asyncio.wait(attackers)
    assert all(status != 429 for *_, status in log)  # the gateway never earned a 429
    assert market.simulator.rest_calls.max_in_any_window(60.0) <= PLAN


@pytest.mark.parametrize("plan", [1, 2, 5, 12, 30, 60, 150, 300, 900])
def test_lookups_and_forwarded_calls_never_take_the_subscribers_reserve(plan: int) -> None:
    settings = Settings(finnhub_rest_rate=plan)
    shares = rest_shares(settings)
    if shares.usable >= 3:  # each share is at least one call
        assert shares.lookups + shares.forwarded <= shares.usable
        assert shares.reserved >= settings.quote_subscriber_share * shares.usable
    assert shares.forwarded_per_address <= max(1.0, shares.forwarded / 3)


def test_shares_adding_up_to_more_than_the_budget_are_refused() -> None:
    with pytest.raises(ConfigError, match="QUOTE_LOOKUP_SHARE \\+ FINNHUB_REST_SHARE"):
        Settings(quote_lookup_share=0.5, finnhub_rest_share=0.5)
    Settings(quote_lookup_share=0.5, finnhub_rest_share=0.5, quote_subscriber_share=0.0)
