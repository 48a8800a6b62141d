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
    slots: int = 10,
    sampled_slots: int = 2,
    turn: float = 2.0,
    changes: int = 6000,
    polls_per_second: float = 1.0,
) -> tuple[FeedPlanner, Clock]:
    clock = Clock()
    limits = PlanLimits(
        socket_slots=slots,
        sampled_slots=sampled_slots,
        turn_seconds=turn,
        changes_per_minute=changes,
        polls_per_second=polls_per_second,
    )
    return FeedPlanner(limits, clock), clock


def turns(plan: FeedPlanner) -> set[str]:
    return set(plan.socket) - {s for s, feed in plan.feeds().items() if feed == "live"}


def carry(plan: FeedPlanner, clock: Clock, seconds: float, trading: dict[str, float]) -> None:
    """`seconds` of planning every 0.25 s, each symbol in `trading` trading every so
    many seconds, seen while it is on the socket (a turn ends at its first trade)."""
    for _ in range(int(seconds / 0.25)):
        clock.now += 0.25
        for symbol, every in trading.items():
            if symbol in plan.socket and int(clock.now / every) != int((clock.now - 0.25) / every):
                plan.traded(symbol, 1)
        plan.plan(DEMAND_OF[id(plan)])


DEMAND_OF: dict[int, dict[str, float]] = {}


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


def test_past_the_cap_the_most_demanded_are_live_the_rest_sampled_or_polled() -> None:
    plan, _ = planner(slots=10, sampled_slots=2, turn=2.0, changes=60)
    demand = zipf(100)
    plan.plan(demand)
    counts = plan.counts()
    assert counts["live"] == 8
    assert counts["sampled"] + counts["polled"] == 92 and counts["sampled"] > 0
    live = {s for s, feed in plan.feeds().items() if feed == "live"}
    assert live == {f"S{i:03d}" for i in range(8)}
    assert len(plan.socket) <= 10
    assert all(plan.feed_of(s) != "live" for s in plan.poll_order())


def test_the_sampled_and_polled_split_follows_both_budgets() -> None:
    """As many are sampled as the rotation refreshes as often as REST refreshes the
    rest: more REST, fewer sampled; no REST at all, every one sampled."""
    counts = []
    for polls_per_second in (0.2, 1.0, 5.0, 0.0):
        plan, _ = planner(slots=10, sampled_slots=4, turn=20.0, polls_per_second=polls_per_second)
        plan.plan(zipf(200))
        counts.append(plan.counts()["sampled"])
    assert counts[0] > counts[1] > counts[2] > 0
    assert counts[3] == 200 - 6


def test_symbols_that_trade_often_are_sampled_and_rare_ones_polled() -> None:
    """Demand alone cannot tell: the planner learns each symbol's trade rate from the
    socket (a turn that waits without a trade lowers it) and samples the frequent
    traders (a turn prices them in a moment), polling the rare ones."""
    plan, clock = planner(slots=4, sampled_slots=2, turn=20.0, changes=6000, polls_per_second=0.1)
    demand = {"L0": 100.0, "L1": 90.0} | {f"F{i}": 5.0 for i in range(4)}
    demand |= {f"R{i}": 5.0 for i in range(4)}
    DEMAND_OF[id(plan)] = demand
    plan.plan(demand)
    trading = {f"F{i}": 1.0 for i in range(4)} | {f"R{i}": 120.0 for i in range(4)}
    carry(plan, clock, 600, trading)
    feeds = plan.feeds()
    assert all(feeds[f"F{i}"] == "sampled" for i in range(4)), feeds
    assert sum(feeds[f"R{i}"] == "polled" for i in range(4)) >= 3, feeds
    assert all(plan.rates.rate(f"F{i}") > 10 * plan.rates.rate(f"R{i}") for i in range(4))


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
    plan, clock = planner(slots=4, sampled_slots=2, turn=2.0, polls_per_second=0.0)
    demand = zipf(8)
    plan.plan(demand)
    first, second = sorted(turns(plan))
    plan.traded(first, 1)  # it traded: its turn ends at the next plan
    clock.now += 0.25
    plan.plan(demand)
    assert first not in plan.socket and second in plan.socket
    clock.now += 2.0  # the second's turn is over
    plan.plan(demand)
    assert second not in plan.socket
    # Every sampled symbol gets its turn in time.
    seen = {first, second}
    for _ in range(40):
        seen |= plan.socket
        clock.now += 2.0
        plan.plan(demand)
    assert seen >= {s for s, f in plan.feeds().items() if f == "sampled"}


def test_a_turn_lasts_about_two_trade_gaps_within_the_longest_turn() -> None:
    plan, clock = planner(slots=3, sampled_slots=1, turn=30.0, polls_per_second=0.0)
    demand = {"L0": 10.0, "L1": 9.0, "OFTEN": 1.0, "OTHER": 1.0}
    DEMAND_OF[id(plan)] = demand
    plan.plan(demand)
    carry(plan, clock, 300, {"OFTEN": 0.5, "OTHER": 0.5, "L0": 0.5, "L1": 0.5})
    assert 0.5 < 1 / plan.rates.rate("OFTEN") < 2.0
    turns_begun, began = plan.turnover, clock.now
    while plan.turnover == turns_begun:  # no trade comes: the turn on the slot ends
        clock.now += 0.25
        plan.plan(demand)
    assert clock.now - began <= 2.25  # two trade gaps (the shortest turn), not 30 s


def test_a_new_symbol_past_the_socket_takes_a_turn_then_is_polled_first() -> None:
    """A symbol never priced is said to be `sampled` before it is planned (its first
    price: a turn, which is free); if its turn brings no trade it goes first in the
    poll order, so its first subscriber has a price within a turn and a poll."""
    plan, clock = planner(slots=3, sampled_slots=1, turn=10.0, polls_per_second=1.0)
    demand = {"L0": 10.0, "L1": 9.0, "OLD": 1.0, "OTHER": 1.0}
    plan.priced("OTHER")
    plan.plan(demand)
    plan.priced("OLD")
    clock.now += 30
    assert plan.feed_of("NEW") == "sampled"  # before any plan: the socket is full
    changes = plan.plan({**demand, "NEW": 1.0})
    assert "NEW" not in changes or changes["NEW"] != "sampled"  # it was told so already
    assert "NEW" in plan.socket and "NEW" not in plan.poll_order()  # its turn first
    clock.now += 10.0  # no trade in its turn
    plan.plan({**demand, "NEW": 1.0})
    assert "NEW" not in plan.socket
    assert plan.poll_order()[0] == "NEW"  # before the 40 s stale OLD


def test_hysteresis_keeps_a_symbol_near_the_boundary_from_flapping() -> None:
    plan, clock = planner(slots=4, sampled_slots=1, turn=1.0, polls_per_second=0.0)
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
    plan, clock = planner(slots=4, sampled_slots=1, turn=5.0, changes=6000)
    demand = {"P0": 100.0, "P1": 90.0, "P2": 80.0, "P3": 70.0, "P11": 50.0}
    demand |= {f"P{i}": 10.0 for i in range(4, 11)}
    plan.priced("P11")  # its subscriber's quote, before any plan
    plan.priced("NOBODY")
    plan.plan(demand)
    clock.now += 5
    plan.plan(demand)
    order = plan.poll_order()
    assert order and order[-1] == "P11"  # the others were never priced: first
    assert len(plan.staleness()) == 12
    plan.plan({**demand, "NOBODY": 1.0})
    clock.now += 5
    plan.plan({**demand, "NOBODY": 1.0})
    assert "NOBODY" in plan.poll_order()[:-1]  # wanted now, never priced since: urgent


def test_past_the_socket_the_price_most_probably_out_of_date_goes_first() -> None:
    """Every symbol past the socket counts alike (demand chose the live ones): the one
    whose price has most probably missed trades is polled first; of two as old, the
    one that trades more often; demand only breaks a tie."""
    plan, clock = planner(slots=2, sampled_slots=1, turn=60.0, polls_per_second=100.0)
    demand = {"L0": 100.0, "S0": 90.0, "WANTED": 4.0, "LITTLE": 1.0}
    plan.rates.carried(["S0"], 100.0)
    plan.rates.traded("S0", 100)  # the one rotation slot: the frequent trader's
    plan.plan(demand)
    assert plan.feed_of("S0") == "sampled"
    for symbol in ("S0", "WANTED", "LITTLE"):
        plan.priced(symbol)
    clock.now += 20
    plan.priced("WANTED")
    plan.priced("S0")
    clock.now += 10  # LITTLE: 30 s old, WANTED and S0: 10 s
    plan.plan(demand)
    assert plan.feed_of("WANTED") == plan.feed_of("LITTLE") == "polled"
    assert plan.poll_order()[:2] == ["LITTLE", "WANTED"]
    for symbol in ("S0", "WANTED", "LITTLE"):
        plan.priced(symbol)
    clock.now += 10
    plan.rates.carried(["LITTLE"], 600.0)  # it has been seen not to trade for long
    assert plan.poll_order()[-1] == "LITTLE"


def test_a_lingering_symbol_takes_no_turn_and_no_poll() -> None:
    """A symbol nobody holds any more (demand 0, lingering before its release) is not
    worth a slot's time or a call: the held ones get them."""
    plan, clock = planner(slots=2, sampled_slots=1, turn=2.0, polls_per_second=1.0)
    demand = {"HELD": 5.0, "ALSO": 1.0, "GONE": 0.0}
    for _ in range(200):
        plan.plan(demand)
        assert "GONE" not in plan.socket and "GONE" not in plan.poll_order()
        clock.now += 0.25
    assert "ALSO" in plan.poll_order() or "ALSO" in plan.socket
    was = plan.feed_of("ALSO")
    plan.plan({**demand, "ALSO": 0.0})  # its last client left: it lingers as it was
    assert plan.feed_of("ALSO") == was and "ALSO" not in plan.poll_order()


def test_seconds_without_any_trade_on_the_socket_teach_nothing() -> None:
    """The market closed or the upstream down: no symbol trades, and the hours carried
    meanwhile must not make every symbol look rare at the open."""
    plan, clock = planner(slots=3, sampled_slots=1, polls_per_second=0.0)
    demand = {"L0": 5.0, "L1": 4.0, "S": 1.0}
    plan.plan(demand)
    plan.traded("L0", 10)
    for _ in range(int(3600 / 5)):
        clock.now += 5
        plan.plan(demand)
    assert plan.rates.rate("L0") > 10 / 60  # 11 trades in ~30 s carried, not in an hour


def test_the_rotation_slots_are_never_idle_while_a_symbol_is_polled() -> None:
    """However plentiful REST is, the rotation's slots sample (a turn costs no call and
    teaches a symbol's rate)."""
    plan, _ = planner(slots=10, sampled_slots=4, polls_per_second=1000.0)
    plan.plan(zipf(100))
    assert plan.counts()["sampled"] == 4


def test_a_symbol_whose_turn_ends_may_take_the_next_at_once_for_no_message() -> None:
    plan, clock = planner(slots=2, sampled_slots=1, turn=5.0, polls_per_second=0.0)
    demand = {"LIVE": 5.0, "ONLY": 1.0, "GONE": 0.0}  # one symbol to rotate
    plan.plan(demand)
    assert "ONLY" in plan.socket
    sent, began = plan.changes_sent, plan.turnover
    for _ in range(10):
        plan.traded("ONLY", 1)  # each trade ends its turn: it takes the next one
        clock.now += 0.25
        plan.plan(demand)
        assert "ONLY" in plan.socket
    assert plan.changes_sent == sent and plan.turnover == began + 10
