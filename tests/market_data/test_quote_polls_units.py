"""The poller's pace (market_data/quote_polls.py): the order it polls in, its spacing,
and a symbol answered meanwhile dropping out of the round."""

from __future__ import annotations

from stock_gateway.market_data.quote_polls import PollPace


def test_polls_go_in_order_evenly_spaced_and_skip_the_busy() -> None:
    pace = PollPace(per_minute=6, window=60.0)
    assert pace.replace(["A", "B", "C"])
    assert pace.wait(0.0) == 0.0
    assert pace.take(0.0, busy={"A"}) == "B"  # A is being fetched: that fetch is its poll
    assert pace.wait(1.0) == 9.0  # six a minute: one every ten seconds
    assert pace.take(10.0, busy=set()) == "A"


def test_a_symbol_answered_meanwhile_is_not_polled_in_this_round() -> None:
    """A new symbol's subscriber's quote prices it while it waits in the round planned
    before: polling it again at once would spend a call on a price a moment old."""
    pace = PollPace(per_minute=60, window=60.0)
    pace.replace(["NEW", "OLD"])
    pace.answered("NEW")
    assert pace.take(0.0, busy=set()) == "OLD"
    assert not pace


def test_polling_off_polls_nothing() -> None:
    pace = PollPace(per_minute=0, window=60.0)
    assert not pace.replace(["A"])
    assert pace.take(0.0, busy=set()) is None
