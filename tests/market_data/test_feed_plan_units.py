"""The feed planner (market_data/feed_plan.py) on an injected clock: live, sampled and
polled symbols, hysteresis, the socket's cap and its rate of changes."""

from __future__ import annotations

import pytest

from stock_gateway.market_data.feed_plan import FeedPlanner, PlanLimits, owner_weighted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planner(
    slots: int = 10, sampled_slots: int = 2, turn: float = 2.0, changes: int = 6000
) -> tuple[FeedPlanner, Clock]:
    clock = Clock()
    limits = PlanLimits(
        socket_slots=slots,
        sampled_slots=sampled_slots,
        turn_seconds=turn,
        changes_per_minute=changes,
    )
    return FeedPlanner(limits, clock), clock


def zipf(n: int) -> dict[str, float]:
    return {f"S{i:03d}": 100.0 / (i + 1) for i in range(n)}


def test_while_everything_fits_every_symbol_is_live() -> None:
    plan, _ = planner()
    changes = plan.plan(zipf(10))
    assert changes == {}  # new and live: nothing to tell anyone
    assert plan.counts() == {"live": 10, "sampled": 0, "polled": 0}
    assert plan.socket == set(zipf(10))


def test_while_everything_fits_a_symbol_waiting_for_the_change_budget_is_live() -> None:
    """Churn spends the budget of upstream changes (a fuzzing client, say); a symbol
    wanted meanwhile is still live, its subscribe only queued: nobody is told
    `sampled` while the socket has room."""
    plan, clock = planner(slots=10, changes=60)  # a burst of 20 changes, then 1 a second
    for round_ in range(15):
        plan.plan({f"C{round_}": 1.0})  # each round: one subscribe, one unsubscribe
    assert plan.plan({"C14": 1.0, "AAPL": 1.0}) == {}
    assert plan.feed_of("AAPL") == "live" and "AAPL" not in plan.socket  # queued
    clock.now += 2  # the budget refills
    assert plan.plan({"C14": 1.0, "AAPL": 1.0}) == {}
    assert "AAPL" in plan.socket


def test_past_the_cap_the_most_demanded_are_live_the_next_sampled_the_rest_polled() -> None:
    plan, _ = planner(slots=10, sampled_slots=2, turn=2.0, changes=60)  # 30 turns a minute
    demand = zipf(100)
    plan.plan(demand)
    counts = plan.counts()
    assert counts["live"] == 8
    assert counts["sampled"] == plan.limits.sampled_symbols == 30
    assert counts["polled"] == 100 - 8 - 30
    live = {s for s, feed in plan.feeds().items() if feed == "live"}
    assert live == {f"S{i:03d}" for i in range(8)}
    assert len(plan.socket) <= 10
    polled = plan.poll_order()
    assert polled and all(plan.feed_of(s) != "live" for s in polled)


def test_the_socket_never_carries_more_than_its_slots_whatever_the_demand() -> None:
    plan, clock = planner(slots=10, sampled_slots=3, turn=1.0)
    for step in range(200):
        demand = {f"S{(i * 7 + step) % 300:03d}": float((i + step) % 13 + 1) for i in range(60)}
        plan.plan(demand)
        assert len(plan.socket) <= 10
        for symbol in list(plan.socket)[:2]:
            plan.priced(symbol)
        clock.now += 0.25


def test_sampled_symbols_take_turns_until_they_trade_or_the_turn_ends() -> None:
    plan, clock = planner(slots=4, sampled_slots=2, turn=2.0)
    demand = zipf(8)
    plan.plan(demand)
    turns = plan.socket - {s for s, f in plan.feeds().items() if f == "live"}
    assert len(turns) == 2
    first, second = sorted(turns)
    plan.priced(first)  # it traded: its turn ends at the next plan
    clock.now += 0.25
    plan.plan(demand)
    assert first not in plan.socket and second in plan.socket
    clock.now += 2.0  # the second's turn is over
    plan.plan(demand)
    assert second not in plan.socket
    # Every sampled symbol gets its turn in time, never-priced ones first.
    seen = set(turns)
    for _ in range(40):
        seen |= plan.socket
        clock.now += 2.0
        plan.plan(demand)
    assert seen >= {s for s, f in plan.feeds().items() if f == "sampled"}


def test_hysteresis_keeps_a_symbol_near_the_boundary_from_flapping() -> None:
    plan, clock = planner(slots=4, sampled_slots=1, turn=1.0)
    demand = {"A": 10.0, "B": 9.0, "C": 8.0, "D": 5.0, "E": 4.9}
    plan.plan(demand)
    assert plan.feed_of("C") == "live" and plan.feed_of("D") == "sampled"
    for wobble in range(20):  # D and C trade places by a little, back and forth
        clock.now += 0.5
        changes = plan.plan({**demand, "C": 8.0 - wobble % 2, "D": 8.0 + wobble % 2 * 0.5})
        assert "C" not in changes and "D" not in changes
    clock.now += 0.5
    changes = plan.plan({**demand, "C": 5.0, "D": 20.0})  # clearly beaten: it swaps
    assert changes["D"] == "live" and plan.feed_of("C") != "live"


def test_a_newly_demanded_symbol_goes_live_at_the_next_plan() -> None:
    plan, clock = planner(slots=10, sampled_slots=2, changes=120)
    demand = zipf(50)
    plan.plan(demand)
    clock.now += 0.25
    demand["HOT"] = owner_weighted({f"10.0.0.{i}": 1 for i in range(50)})
    plan.plan(demand)
    assert plan.feed_of("HOT") == "live" and "HOT" in plan.socket


def test_changes_to_the_socket_stay_within_the_rate() -> None:
    plan, clock = planner(slots=20, sampled_slots=5, turn=0.5, changes=120)  # 2 a second
    before = plan.changes_sent
    start = clock.now
    for step in range(600):  # five minutes of churning demand
        demand = {f"S{(i + step // 4) % 200:03d}": 100.0 / (i + 1) for i in range(100)}
        plan.plan(demand)
        clock.now += 0.5
    minutes = (clock.now - start) / 60
    burst = 2 * 20
    assert plan.changes_sent - before <= 120 * minutes + burst + 1


def test_a_symbol_nobody_wants_gives_its_slot_back() -> None:
    plan, clock = planner(slots=4, sampled_slots=1)
    demand = zipf(6)
    plan.plan(demand)
    assert plan.feed_of("S000") == "live"
    del demand["S000"]
    clock.now += 0.25
    plan.plan(demand)
    assert "S000" not in plan.socket and "S000" not in plan.feeds()


def test_owners_count_less_than_their_sockets() -> None:
    assert owner_weighted({"one": 100}) == pytest.approx(10.0)
    assert owner_weighted({f"o{i}": 1 for i in range(100)}) == pytest.approx(100.0)


def test_a_price_that_comes_before_the_plan_counts_and_is_forgotten_if_unwanted() -> None:
    """A new symbol's first subscriber's quote may come before the planner has planned
    it: it is priced all the same, so REST goes to the never-priced ones first (the
    quote was the symbol's poll); a price for a symbol nobody wants is not kept."""
    plan, clock = planner(slots=4, sampled_slots=1, turn=60.0, changes=6000)  # 1 sampled
    demand = {"P0": 100.0, "P1": 90.0, "P2": 80.0, "P3": 70.0, "P11": 50.0}
    demand |= {f"P{i}": 10.0 for i in range(4, 11)}  # P11: the most demanded polled one
    plan.priced("P11")  # its subscriber's quote, before any plan
    plan.priced("NOBODY")
    plan.plan(demand)
    clock.now += 5
    order = plan.poll_order()
    assert plan.feed_of("P11") == "polled" and order[-1] == "P11"
    assert len(plan.staleness()) == 12
    plan.plan({**demand, "NOBODY": 1.0})
    assert "NOBODY" in plan.poll_order()[:-1]  # wanted now, never priced since: urgent


def test_a_little_wanted_symbol_is_not_starved_by_a_more_wanted_one() -> None:
    """Polls go by staleness times the square root of demand: a symbol one client wants,
    three times as stale as one four clients want, is polled first (by demand alone it
    would wait behind it, and again behind every more wanted symbol)."""
    plan, clock = planner(slots=2, sampled_slots=1, turn=60.0, changes=6000)  # 1 sampled
    demand = {"L0": 100.0, "S0": 90.0, "WANTED": 4.0, "LITTLE": 1.0}
    plan.plan(demand)
    plan.priced("S0")  # the sampled one: priced by its turn, so polls leave it be
    plan.priced("LITTLE")
    clock.now += 20
    plan.priced("WANTED")
    clock.now += 10  # LITTLE: 30 s stale, WANTED: 10 s
    plan.plan(demand)
    assert plan.feed_of("WANTED") == plan.feed_of("LITTLE") == "polled"
    assert plan.poll_order() == ["LITTLE", "WANTED"]
