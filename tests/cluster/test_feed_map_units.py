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


def test_a_new_symbol_is_told_only_what_differs_from_what_it_was_said_to_be() -> None:
    """In one batch that makes the socket full, every new symbol not live is told (its
    clients joined while the map said "live"); once full, a new "sampled" one is not
    (they were told "sampled" when they joined), a new "polled" one is."""
    feeds = FeedMap()
    assert feeds.apply({"X": "sampled", "Y": "sampled", "Z": "live"}) == {
        "X": "sampled",
        "Y": "sampled",
    }
    assert feeds.apply({"P": "sampled", "Q": "polled", "R": "live"}) == {
        "Q": "polled",
        "R": "live",
    }
