"""Polled symbols (market_data/feed_plan.py, QuoteService.poll): against the real gateway
and a simulator whose socket carries two symbols and whose whole market trades (Zipf),
a symbol past the socket's slots reaches its subscriber as fresh `quote`s marked
`"feed":"polled"`, by REST calls within the plan's rate and never one refused (429)."""

from __future__ import annotations

import asyncio
import time

import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.helpers import TEST_KEY, Market, run_gateway, settings_for

SYMBOLS = [f"POL{i}" for i in range(8)]
# Calls a minute: the simulator's and FINNHUB_REST_RATE. A plan this size polls several
# times a second, so the second polled quote comes within a second; the bound asserted
# is the same whatever the plan (a free plan's 30 took ~10 s).
REST_RATE = 600


@pytest.mark.slow  # polls paced at the REST rate
async def test_a_polled_symbols_subscriber_gets_fresh_polled_quotes_within_the_rest_rate() -> None:
    simulator = MarketSimulator(
        rate=40, token=TEST_KEY, max_symbols=2, tick=0.05, rest_rate=REST_RATE,
        skew="zipf", universe=tuple(SYMBOLS),
    )  # fmt: skip
    async with serve(simulator) as url:
        market = Market(simulator, url)
        settings = settings_for(
            market,
            rest_enabled=True,
            finnhub_rest_rate=REST_RATE,
            max_upstream_symbols=2,
            sampled_slots=1,
            upstream_changes_per_minute=2,
            quote_ttl=0.5,
        )
        async with run_gateway(settings) as gateway:
            client = await gateway.connect()
            await client.wait_upstream_connected()
            await client.subscribe(*SYMBOLS)
            feeds: dict[str, str] = {}
            quoted: dict[str, set[int]] = {}
            async with asyncio.timeout(40):
                # Two quotes of different times for a polled symbol: the subscription's
                # snapshot is one; the other can only come from the poller.
                while not any(
                    feeds.get(symbol) == "polled" and len(times) >= 2
                    for symbol, times in quoted.items()
                ):
                    message = await client.receive()
                    if message["type"] == "feed":
                        feeds[message["symbol"]] = message["feed"]
                    elif message["type"] == "quote":
                        assert message["feed"] == "polled"
                        quoted.setdefault(message["symbol"], set()).add(
                            message["data"]["timestamp"]
                        )
    statuses = {status for _, _, _, status in simulator.rest_calls.log}
    assert 429 not in statuses
    assert simulator.rest_calls.max_in_any_window() <= REST_RATE
    assert simulator.max_carried <= 2 and simulator.refused_over_cap == 0


def quote_calls(simulator: MarketSimulator, since: float = 0.0) -> list[tuple[float, str]]:
    """The simulator's answered quote calls since `since` (monotonic): (when, symbol)."""
    return [
        (at, symbol)
        for at, path, symbol, status in simulator.rest_calls.log
        if path.endswith("quote") and status == 200 and at >= since
    ]


# The plan's window scaled down tenfold (FINNHUB_REST_WINDOW and the simulator alike):
# 60 calls every 6 s, so the poller's pace is one call in 0.1 s and not one a second.
WINDOW = 6.0


def polled_market(rest_rate: int) -> MarketSimulator:
    return MarketSimulator(
        rate=40, token=TEST_KEY, max_symbols=2, tick=0.05, rest_rate=rest_rate,
        rest_window=WINDOW, skew="zipf", universe=tuple(MANY),
    )  # fmt: skip


MANY = [f"BUD{i}" for i in range(40)]
NEWCOMER = MANY[-1]  # in the simulated market, wanted by nobody until it is


async def test_polls_spend_the_whole_budget_left_within_the_rate() -> None:
    """The default shares reserve subscribers 12 of the 57 usable calls a window; polls
    are no longer held to that reserve but take whatever the key's budget has free: once
    every symbol has had its first quote, the next eight polls come within 3 s (0.8 s at
    the whole budget's pace; at the reserve's 11 a window they would take 4.4 s), and
    never a 429 or a window over the rate. Read from the simulator's own log, so how
    soon the client reads its quotes does not move the verdict. (Short turns: a symbol
    past the socket is polled once a turn could have priced it.)"""
    simulator = polled_market(60)
    async with serve(simulator) as url:
        market = Market(simulator, url)
        settings = settings_for(
            market, rest_enabled=True, max_upstream_symbols=2, sampled_slots=1,
            upstream_changes_per_minute=2, finnhub_rest_window=WINDOW,
            sample_turn_seconds=1.0,
        )  # fmt: skip
        async with run_gateway(settings) as gateway:
            client = await gateway.connect()
            await client.wait_upstream_connected()
            await client.subscribe(*MANY[:24])
            async with asyncio.timeout(20):
                while (polls := polls_after_first_quotes(simulator, MANY[:24])) is None:
                    await client.receive()  # each call's answer comes as a quote
    assert polls[-1] - polls[0] < 3.0
    statuses = {status for _, _, _, status in simulator.rest_calls.log}
    assert 429 not in statuses
    assert simulator.rest_calls.max_in_any_window() <= 60


def polls_after_first_quotes(simulator: MarketSimulator, symbols: list[str]) -> list[float] | None:
    """When the call that quoted the last of `symbols` for the first time went, and the
    eight calls after it; None until there are that many."""
    calls = quote_calls(simulator)
    quoted: set[str] = set()
    for index, (_, symbol) in enumerate(calls):
        quoted.add(symbol)
        if quoted >= set(symbols):
            after = [at for at, _ in calls[index : index + 9]]
            return after if len(after) == 9 else None
    return None


async def test_a_new_symbol_past_the_socket_is_polled_first_once_and_prices_it() -> None:
    """A symbol past the socket, subscribed while the poller is busy with others: its
    subscriber asks for no quote of its own (hundreds of new symbols would spend the
    whole budget on them); its turn brings no trade (it is the market's rarest, and the
    change budget leaves it none), so it goes first in the poll order, and that one
    poll's quote prices it for its subscriber well within the bound, one REST call for
    it while the poller goes on with the others."""
    simulator = polled_market(60)
    async with serve(simulator) as url:
        market = Market(simulator, url)
        settings = settings_for(
            market, rest_enabled=True, max_upstream_symbols=2, sampled_slots=1,
            upstream_changes_per_minute=2, quote_ttl=0.5, finnhub_rest_window=WINDOW,
            sample_turn_seconds=2.0,
        )  # fmt: skip
        async with run_gateway(settings) as gateway:
            client = await gateway.connect()
            await client.wait_upstream_connected()
            await client.subscribe(*MANY[:12])
            # The poller round the 11 past the socket: none is never-priced now.
            async with asyncio.timeout(20):
                while len({s for _, s in quote_calls(simulator)} & set(MANY[:12])) < 11:
                    await client.receive()
            newcomer = await gateway.connect()
            subscribed = time.monotonic()
            await newcomer.subscribe(NEWCOMER)
            feeds = []
            async with asyncio.timeout(FIRST_PRICE_BOUND):
                while (message := await newcomer.receive())["type"] != "quote":
                    if message["type"] == "feed":
                        feeds.append(message["feed"])
            assert message["symbol"] == NEWCOMER and message["feed"] == "polled"
            assert feeds[0] == "sampled"  # told at once: past the socket, a turn first
            priced = time.monotonic()
            async with asyncio.timeout(10):  # the poller goes on to five others
                while len([s for _, s in quote_calls(simulator, priced)]) < 5:
                    await client.receive()
        calls = [at for at, symbol in quote_calls(simulator) if symbol == NEWCOMER]
        # One call, and not the subscriber's own (that would go at once): the poll once
        # its turn's time (2 s) had passed without a trade.
        assert len(calls) == 1 and 2.0 <= calls[0] - subscribed < 2.0 + WINDOW


FIRST_PRICE_BOUND = 60.0  # docs/limits.md: a symbol is priced within 60 s of its first subscriber
