"""Pure logic behind the quotes and the REST budget: the margin and slack of the budget's
window, the sliding window of a share, the quote cache's two bounded tables, charging a
user and an address together, and the quote queue's order (subscribers, lookups within
their share, refreshes at their pace)."""

from __future__ import annotations

import asyncio

import pytest

from stock_gateway.market_data.model import Quote
from stock_gateway.market_data.quote_cache import MAX_UNKNOWN, QuoteCache
from stock_gateway.market_data.quotes import IN_FLIGHT, QuoteUnavailable
from stock_gateway.market_data.rest_budget import usable_rate
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.sliding_window import SlidingWindow
from tests.support.fakes import make_budget, make_quotes


def a_quote(previous_close: float = 100.0) -> Quote:
    return Quote(101.0, 1.0, 1.0, 100.5, 101.5, 99.5, previous_close, 1_764_187_200_000)


def test_the_budget_keeps_a_margin_and_counts_a_longer_minute() -> None:
    assert [usable_rate(rate) for rate in (1, 2, 12, 60, 300)] == [1, 1, 11, 57, 285]
    budget = make_budget(per_minute=60, slack=1.0)
    budget._calls.extend([float(index) for index in range(60)])  # one a second for a minute
    # t=0 leaves our window at 61, not 60: a call granted at 60 that reached Finnhub
    # sooner than the one granted at 0 would be its 61st in 60 s.
    assert budget._wait(60.0) == pytest.approx(1.0)
    assert budget._wait(61.0) == 0


def test_the_budget_counts_the_plans_window_not_a_fixed_minute() -> None:
    budget = make_budget(per_minute=11, window=6.0, slack=1.0)  # FINNHUB_REST_WINDOW=6
    budget._calls.extend([index / 2 for index in range(11)])  # the plan's 11 within 5 s
    assert budget._wait(5.5) == pytest.approx(1.5)  # t=0 leaves at 6 + 1 of slack, not 61
    assert budget._wait(7.0) == 0
    budget._calls.append(7.0)
    assert budget._wait(7.0) == pytest.approx(0.5)  # the next, t=0.5, leaves at 7.5


def test_a_sliding_window_holds_in_every_span_and_is_exact_at_its_edge() -> None:
    window = SlidingWindow(2, 10.0)
    assert window.take(0.0) == 0 and window.take(1.0) == 0
    assert window.take(5.0) == pytest.approx(5.0)  # refused: the event at 0 leaves at 10
    assert window.wait(9.999) > 0
    assert window.take(10.0) == 0  # exactly a span later it has left
    assert window.take(10.5) == pytest.approx(0.5)


def test_unknown_symbols_are_remembered_apart_and_never_push_a_quote_out() -> None:
    cache = QuoteCache(ttl=60.0, unknown_ttl=3600.0)
    cache.store("AAPL", a_quote(), 0.0)
    for index in range(MAX_UNKNOWN + 5):
        cache.store(f"JUNK{index}", None, 1.0)
    assert cache.previous_close("AAPL") == 100.0  # still there, behind every change
    assert len(cache._unknown) == MAX_UNKNOWN  # bounded: the oldest junk went first
    assert not cache.fresh("JUNK0", 2.0) and cache.fresh(f"JUNK{MAX_UNKNOWN}", 2.0)
    assert cache.fresh("JUNK9", 3600.0) and not cache.fresh("JUNK9", 3601.5)
    assert cache.fresh("AAPL", 60.0) and not cache.fresh("AAPL", 60.5)
    assert not cache.store("AAPL", a_quote(), 70.0)  # the same close: nothing new
    assert cache.store("AAPL", a_quote(104.0), 80.0)  # a new day's
    assert not cache.store("AAPL", None, 90.0) and cache.previous_close("AAPL") is None


def test_a_fetch_is_charged_to_every_owner_or_to_none() -> None:
    shares = Allowances(1 / 60, 1)
    assert shares.take_all(["user:alice", "10.0.0.1"], 0.0) == 0
    assert shares.take_all(["user:bob", "10.0.0.1"], 1.0) > 0  # the address is spent
    assert shares.take_all(["user:bob", "10.0.0.2"], 1.0) == 0  # so bob was not charged
    assert shares.take_all(["user:alice", "10.0.0.3"], 1.0) > 0  # alice is spent anywhere


class _Source:
    """A Finnhub that answers when let, and says what it was asked, in order."""

    def __init__(self) -> None:
        self.asked: asyncio.Queue[str] = asyncio.Queue()
        self.open = asyncio.Event()

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        self.asked.put_nowait(symbol)
        await self.open.wait()
        return a_quote()

    async def next_asked(self) -> str:
        return await asyncio.wait_for(self.asked.get(), 2.0)


async def test_subscribers_go_first_lookups_keep_to_their_share_and_refreshes_to_their_pace() -> (
    None
):
    source = _Source()
    service = make_quotes(
        source, Allowances(100, 100), ttl=0.0, lookups_per_minute=IN_FLIGHT + 1,
        refreshes_per_minute=1,
    )  # fmt: skip
    worker = asyncio.create_task(service.run())
    try:
        # Every slot on the way to the budget is taken by a lookup; one more waits.
        busy = [service.request(f"L{index}", "x", lookup=True) for index in range(IN_FLIGHT)]
        assert [await source.next_asked() for _ in busy] == [f"L{i}" for i in range(IN_FLIGHT)]
        waiting_lookup = service.request("LATE", "x", lookup=True)
        refused = service.request("ONEMORE", "x", lookup=True)  # past the lookups' share
        failure = refused.exception()
        assert isinstance(failure, QuoteUnavailable) and not failure.share_spent
        service.refresh(["R1", "R2"])
        subscriber = service.request("SUB", "y")
        source.open.set()
        # The subscriber, asked last, goes first; then the lookup; then one refresh.
        assert [await source.next_asked() for _ in range(3)] == ["SUB", "LATE", "R1"]
        assert await subscriber is not None and await waiting_lookup is not None
        # R2 waits its turn (one refresh a minute here) while a subscriber passes.
        assert await service.request("SUB2", "y") is not None
        assert await source.next_asked() == "SUB2"
        assert source.asked.empty()
    finally:
        worker.cancel()
        await asyncio.wait([worker])


async def test_a_new_previous_close_is_announced() -> None:
    service = make_quotes(_Source(), Allowances(1, 1))
    heard: list[tuple[str, float]] = []
    service.on_new_close(lambda symbol, quote: heard.append((symbol, quote.previous_close)))
    service.remember("AAPL", a_quote(100.0))
    service.remember("AAPL", a_quote(100.0))
    service.remember("AAPL", a_quote(97.5))
    assert heard == [("AAPL", 97.5)]
