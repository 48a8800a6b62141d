"""A node's copy of the leader's plan (cluster/feeds.py's `FeedMap`): what it says of a
symbol not planned yet, and which changes its clients are told, as the planner itself
tells them (market_data/feed_plan.py)."""

from __future__ import annotations

from stock_gateway.cluster.feeds import FeedMap


def test_a_symbol_not_planned_is_live_until_the_socket_is_full_then_sampled() -> None:
    feeds = FeedMap()
    assert feeds.feed_of("NEW") == "live" and not feeds.rotating
    assert feeds.apply({"A": "live", "B": "live"}) == {}  # new and live: as said
    feeds.apply({"C": "polled"})
    assert feeds.rotating and feeds.feed_of("NEW") == "sampled"
    assert feeds.apply({"C": None}) == {} and not feeds.rotating


def test_a_new_symbol_is_told_unless_live_while_nothing_was_past_the_socket() -> None:
    """Its clients joined before or after another change filled the socket (told
    nothing, so live; or told "sampled"): a new symbol not live is always told, and a
    new live one once the socket was full (a repeat is the safe side)."""
    feeds = FeedMap()
    assert feeds.apply({"X": "sampled", "Y": "sampled", "Z": "live"}) == {
        "X": "sampled",
        "Y": "sampled",
    }
    assert feeds.apply({"P": "sampled", "Q": "polled", "R": "live"}) == {
        "P": "sampled",
        "Q": "polled",
        "R": "live",
    }
    assert feeds.apply({"P": "sampled", "Q": "sampled"}) == {"Q": "sampled"}  # known ones
