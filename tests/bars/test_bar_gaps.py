"""Honest gaps: a bar whose interval overlaps a time the upstream was not received says
`"gap": true`, through the book (units), against the real gateway when Finnhub drops
the connection, and across a restart on the same SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stock_gateway.bars.book import Bar
from stock_gateway.bars.outages import MAX_SPANS, Outages
from stock_gateway.market_data.model import Trade
from tests.support.bar_stores import gateway_on, get_json
from tests.support.bars import next_second_boundary, now_ms, subscribe_bars, trade_at
from tests.support.fakes import make_book
from tests.support.helpers import Client, GatewayUnderTest, Market, poll_until

MINUTE, DAY = 60_000, 86_400_000
T = 1_764_000_000_000 // MINUTE * MINUTE  # a whole minute


def at(price: float, t: int) -> Trade:
    return Trade("AAPL", price, 1.0, t, None)


def test_outages_overlap_only_the_time_they_cover() -> None:
    outages = Outages()
    assert not outages.overlaps(T, T + MINUTE)
    assert outages.began(T + 10_000) and not outages.began(T + 11_000)  # no news
    assert outages.overlaps(T, T + MINUTE) and outages.overlaps(T + 3 * MINUTE, T + 4 * MINUTE)
    outages.ended(T + 20_000)
    assert outages.overlaps(T, T + MINUTE)  # [10 s, 20 s) lies in the first minute
    assert outages.overlaps(T + 19_000, T + 19_001)
    assert not outages.overlaps(T + 20_000, T + 30_000)  # from the reconnection on
    assert not outages.overlaps(T, T + 10_000)  # before the loss
    assert not outages.overlaps(T + MINUTE, T + 2 * MINUTE)


def test_outages_stay_bounded_and_merging_only_marks_more() -> None:
    outages = Outages()
    for index in range(MAX_SPANS + 10):
        outages.began(T + index * 1000)
        outages.ended(T + index * 1000 + 10)
    assert len(outages._spans) == MAX_SPANS
    last = T + (MAX_SPANS + 9) * 1000
    assert outages.overlaps(last, last + 1) and not outages.overlaps(last + 10, last + 990)
    assert outages.overlaps(T, T + 1)  # the oldest still counts
    # Merged where the spans were closest, not across the long quiet times.
    sparse = Outages()
    sparse.began(T)
    sparse.ended(T + 10)  # the start-up span, then a long quiet day
    for index in range(MAX_SPANS):
        sparse.began(T + DAY + index * 1000)
        sparse.ended(T + DAY + index * 1000 + 10)
    assert sparse.overlaps(T, T + 1) and not sparse.overlaps(T + 1000, T + DAY - 1000)


def test_the_book_marks_open_bars_at_a_loss_and_bars_opened_after_it() -> None:
    book = make_book(outages=Outages(), grace=0.5)
    book.add_trades([at(10.0, T + 1_000)], T + 1_500)
    assert not book.bars("AAPL", "1m")[0].gap
    book.upstream_down(T + 5_000)
    book.upstream_up(T + 8_000)
    [minute] = book.bars("AAPL", "1m")
    assert minute.gap  # open when the upstream was lost
    live = [event for event in book.due(T + 9_000) if event.interval == "1m"]
    assert live and live[0].bar["gap"] is True  # the next live update says so
    # The 1s bar of second 1 had closed (plus grace) before the loss: it is whole.
    assert [bar.gap for bar in book.bars("AAPL", "1s")] == [False]
    # A trade after the reconnection: its second is whole, its hour and day are not.
    book.add_trades([at(11.0, T + 9_100)], T + 9_200)
    assert not book.bars("AAPL", "1s")[-1].gap
    assert all(bar.gap for bar in book.bars("AAPL", "1h") + book.bars("AAPL", "1d"))
    finals = book.due(T + 2 * MINUTE)
    assert [e.bar["gap"] for e in finals if e.interval == "1m"] == [True]
    # A late trade for a closed bar revises it: the flag stays as it was.
    [revised] = [e for e in book.add_trades([at(9.0, T + 2_000)], T + 2 * MINUTE) if
                 e.interval == "1m"]  # fmt: skip
    assert revised.revised and revised.bar["gap"] is True


def test_a_book_that_starts_blind_marks_the_bars_its_start_fell_in() -> None:
    book = make_book(outages=Outages(down_since=T + 30_000))
    book.upstream_up(T + 31_000)
    book.add_trades([at(10.0, T + 45_000)], T + 45_100)
    assert book.bars("AAPL", "1m")[0].gap  # its first 31 s were before the gateway
    assert not book.bars("AAPL", "1s")[0].gap


def test_an_open_bar_read_back_from_a_store_is_a_gap() -> None:
    book = make_book()
    left_open = Bar.of(T, 10.0, 1.0, T + 1_000)
    book.restore("AAPL", "1m", [Bar.of(T - MINUTE, 9.0, 1.0, T - 1)], left_open)
    before, reopened = book.bars("AAPL", "1m")
    assert not before.gap and reopened.gap


class Reader:
    """A client's messages, kept as they come, so waiting for one kind loses no other."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []

    async def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for message in self.seen:
            if wanted(message):
                self.seen.remove(message)
                return message
        async with asyncio.timeout(15):
            while not wanted(message := await self.client.receive()):
                self.seen.append(message)
        return message

    async def status(self, state: str) -> None:
        await self.until(lambda m: m["type"] == "status" and m["upstream"] == state)

    async def bar(self, interval: str, start: int, *, final: bool) -> dict[str, Any]:
        message = await self.until(
            lambda m: m["type"] == "bar" and m["interval"] == interval
            and m["bar"]["t"] == start and m["final"] is final
        )  # fmt: skip
        bar: dict[str, Any] = message["bar"]
        return bar


# Real seconds of 1 s bars around a real reconnection (up to five tries to land the
# loss within a trade's second; ~4.5 s): the slow tier. The book's units above prove
# the gap rule itself in the fast tier.
@pytest.mark.slow
async def test_a_bar_open_while_finnhub_drops_the_connection_says_so(
    market: Market, gateway: GatewayUnderTest
) -> None:
    simulator = market.simulator
    client = await gateway.connect()
    reader = Reader(client)
    await subscribe_bars(client, "NVDA", "1s")  # begun after the gateway connected
    await client.subscribe("NVDA")
    await simulator.wait_for(lambda: "NVDA" in simulator.subscribed_symbols(), timeout=15)
    for _ in range(5):  # until the loss is seen within the second the trade opened
        second = await next_second_boundary()
        await simulator.send_trades([trade_at("NVDA", 100.0, second + 5)])
        await reader.until(lambda m: m["type"] == "price_update")  # counted in its bars
        connections = simulator.connection_count
        await simulator.drop_connections()
        await reader.status("reconnecting")
        lost_by = now_ms()  # the gateway marked its open bars before telling clients
        await reader.status("connected")
        await simulator.wait_for(lambda n=connections: simulator.connection_count > n, timeout=15)
        await simulator.wait_for(lambda: "NVDA" in simulator.subscribed_symbols(), timeout=15)
        if lost_by < second + 1000:
            break
    else:
        pytest.fail("the upstream was never lost within the second of a trade")
    assert (await reader.bar("1s", second, final=True))["gap"] is True
    whole = await next_second_boundary()  # a second wholly after the reconnection
    await simulator.send_trades([trade_at("NVDA", 101.0, whole + 100)])
    assert (await reader.bar("1s", whole, final=True))["gap"] is False
    candles = await gateway.get_json(f"/bars/NVDA?interval=1s&from={second // 1000}")
    assert candles["t"][0] == second // 1000 and candles["gap"][0] is True
    assert candles["gap"][candles["t"].index(whole // 1000)] is False


@pytest.mark.slow  # two gateways in turn over real 1 s bars
async def test_a_bar_left_open_by_a_stopped_gateway_comes_back_as_a_gap(
    tmp_path: Path, market: Market
) -> None:
    simulator = market.simulator
    hour = now_ms() // 3_600_000 * 3_600_000
    async with (
        gateway_on(tmp_path, market) as (_, base),
        aiohttp.ClientSession() as session,
        session.ws_connect(base.replace("http", "ws") + "/ws") as ws,
    ):
        await ws.send_json({"action": "subscribe", "symbols": ["AMD"]})
        await simulator.wait_for(lambda: "AMD" in simulator.subscribed_symbols())
        await simulator.send_trades([trade_at("AMD", 50.0, hour + 1_000)])

        async def counted() -> bool:
            held = await get_json(base, f"/bars/AMD?interval=1h&from={hour // 1000}")
            return bool(held["s"] == "ok")

        await poll_until(counted)
    # A clean stop wrote the open hour; the next gateway reads it back as a gap, whether
    # the hour is still open (restored as the open bar) or has ended meanwhile.
    async with (
        gateway_on(tmp_path, market) as (_, base),
        aiohttp.ClientSession() as session,
        session.ws_connect(base.replace("http", "ws") + "/ws") as ws,
    ):
        await ws.send_json({"action": "subscribe_bars", "symbols": ["AMD"], "interval": "1h"})
        async with asyncio.timeout(15):
            while (message := await ws.receive_json())["type"] != "bars":
                pass
        [bar] = [bar for bar in message["bars"] if bar["t"] == hour]
        assert bar["c"] == 50.0 and bar["gap"] is True
