"""Which subscribers make the quote service fetch (delivery/quote_delivery.py): a live
symbol's, not one past the socket's (the feed planner prices those), and, while the
socket is full, not a subscriber that already has a live snapshot of a symbol whose
previous close is known. Against a real `QuoteService` and a source that counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from stock_gateway.delivery.encoders import WS
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.delivery.quote_delivery import QuoteDelivery
from stock_gateway.delivery.stats import FanoutStats
from stock_gateway.market_data.model import Quote
from stock_gateway.market_data.quotes import QuoteService
from stock_gateway.runtime.allowances import Allowances
from tests.support.fakes import FakeSocket, FakeWriter, make_quotes, outbox_limits


class CountingSource:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        self.asked.append(symbol)
        if symbol == "JUNK":
            return None  # Finnhub's zeros: no such symbol
        return Quote(100.0, 1.0, 1.0, 99.0, 101.0, 98.0, 99.0, 1_000)


@dataclass
class Plan:
    """The planner's view: these symbols past the socket, the rest live."""

    rotating: bool = False
    past: set[str] = field(default_factory=set)

    def feed_of(self, symbol: str) -> str:
        return "sampled" if symbol in self.past else "live"


class NoLivePrices:
    def timestamp(self, symbol: str) -> int | None:
        return None


@dataclass
class Rig:
    source: CountingSource
    quotes: QuoteService
    plan: Plan
    delivery: QuoteDelivery
    client: ClientConnection
    writer: FakeWriter

    async def fetched_after(self, send: list[tuple[str, bool]]) -> list[str]:
        """What the source was asked for once `send` (symbol, quiet) went: a lookup
        asked after them is the barrier (fetches start in the order asked)."""
        before = len(self.source.asked)
        for symbol, quiet in send:
            self.delivery.send(self.client, symbol, quiet=quiet)
        await self.quotes.get("BARRIER", lookup=True)
        return [s for s in self.source.asked[before:] if s != "BARRIER"]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    source = CountingSource()
    quotes = make_quotes(source, Allowances.per_minute(1000), ttl=0.0)  # never fresh
    plan = Plan()
    writer = FakeWriter()
    client = ClientConnection(
        FakeSocket(), FanoutStats(), direct=writer, limits=outbox_limits(), encoder=WS
    )
    delivery = QuoteDelivery(quotes, lambda symbol: [client], NoLivePrices(), plan)
    running = asyncio.create_task(quotes.run())
    try:
        yield Rig(source, quotes, plan, delivery, client, writer)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await client.stop()


async def test_a_live_symbols_subscriber_asks_one_past_the_socket_does_not(rig: Rig) -> None:
    rig.plan.rotating = True
    rig.plan.past = {"PAST"}
    assert await rig.fetched_after([("LIVE", False), ("PAST", False)]) == ["LIVE"]


async def test_with_a_snapshot_and_a_known_close_a_subscriber_asks_only_while_there_is_room(
    rig: Rig,
) -> None:
    """The close comes from a first quote; a quote older than QUOTE_TTL is fetched again
    for a later subscriber that has a live snapshot, while the socket has room (a new
    day's close, say), not while it is full: REST prices the symbols past it then. One
    with no snapshot asks either way."""
    assert await rig.fetched_after([("LIVE", False)]) == ["LIVE"]
    assert await rig.fetched_after([("LIVE", True)]) == ["LIVE"]
    rig.plan.rotating = True
    assert await rig.fetched_after([("LIVE", True)]) == []
    assert await rig.fetched_after([("LIVE", False)]) == ["LIVE"]
    assert await rig.fetched_after([("NEW", True)]) == ["NEW"]  # no close known yet


async def test_a_symbol_past_the_socket_gets_its_last_quote_at_once_however_old(rig: Rig) -> None:
    """A later subscriber of a polled symbol (no live snapshot) is not left with nothing
    until the next poll: the last quote, stale as it is, comes at once, for no call."""
    assert await rig.fetched_after([("P", False)]) == ["P"]
    rig.plan.rotating = True
    rig.plan.past = {"P"}
    before = sum(m.get("type") == "quote" for m in rig.writer.messages())
    assert await rig.fetched_after([("P", False)]) == []
    quotes = [m for m in rig.writer.messages() if m.get("type") == "quote"]
    assert len(quotes) == before + 1 and quotes[-1]["symbol"] == "P"


async def test_every_answer_reaches_the_planner_no_quote_too(rig: Rig) -> None:
    """A symbol Finnhub has no quote for is answered all the same: the planner must not
    keep it first in the poll order as never priced."""
    answers: list[tuple[str, Quote | None]] = []
    rig.quotes.on_quoted(lambda symbol, quote: answers.append((symbol, quote)))
    await rig.quotes.get("JUNK")
    await rig.quotes.get("REAL")
    assert [symbol for symbol, _ in answers] == ["JUNK", "REAL"]
    assert answers[0][1] is None and answers[1][1] is not None
