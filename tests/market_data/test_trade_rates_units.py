"""Trade rates as the socket sees them (market_data/trade_rates.py) and what turns cost
(market_data/rotation.py): pure arithmetic, no clock."""

from __future__ import annotations

import pytest

from stock_gateway.market_data.rotation import SHORTEST_TURN, sample_count, turn_length
from stock_gateway.market_data.trade_rates import HORIZON, PRIOR_SECONDS, TradeRates


def test_a_symbol_never_carried_trades_at_the_prior_rate() -> None:
    rates = TradeRates()
    assert rates.rate("NEW") == pytest.approx(1 / PRIOR_SECONDS)


def test_seconds_on_the_socket_without_a_trade_lower_the_rate_and_trades_raise_it() -> None:
    rates = TradeRates()
    rates.carried(["QUIET", "BUSY"], 100.0)
    rates.traded("BUSY", 200)
    assert rates.rate("QUIET") == pytest.approx(1 / (100 + PRIOR_SECONDS))
    assert rates.rate("BUSY") == pytest.approx(201 / (100 + PRIOR_SECONDS))


def test_past_the_horizon_the_counts_fade_so_a_change_of_pace_is_noticed() -> None:
    """A symbol that traded twice a second for an hour, then goes quiet: within a
    horizon its rate is well under a tenth of what it was."""
    rates = TradeRates()
    for _ in range(60):
        rates.carried(["S"], 60.0)
        rates.traded("S", 120)
    busy = rates.rate("S")
    assert busy == pytest.approx(2.0, rel=0.1)
    for _ in range(int(HORIZON / 60) * 3):
        rates.carried(["S"], 60.0)
    assert rates.rate("S") < busy / 10


def test_a_forgotten_symbol_starts_again_from_the_prior() -> None:
    rates = TradeRates()
    rates.carried(["S"], 500.0)
    rates.forget("S")
    assert rates.rate("S") == pytest.approx(1 / PRIOR_SECONDS)


def test_expected_lag_is_zero_at_first_and_grows_slower_for_a_rare_trader() -> None:
    """A price just fetched is current; a minute later a symbol trading every second has
    most probably been out of date for about 59 s, one trading every 10 minutes for a
    few seconds only."""
    rates = TradeRates()
    rates.carried(["OFTEN", "RARE"], HORIZON)
    rates.traded("OFTEN", int(HORIZON))
    assert rates.expected_lag("OFTEN", 0.0) == 0.0
    assert rates.expected_lag("OFTEN", 60.0) == pytest.approx(59.0, abs=0.1)
    assert rates.expected_lag("RARE", 60.0) < 5.0
    assert rates.expected_lag("RARE", 120.0) > rates.expected_lag("RARE", 60.0)


def test_a_turn_lasts_two_trade_gaps_within_its_bounds() -> None:
    assert turn_length(0.1, longest=60.0) == pytest.approx(20.0)
    assert turn_length(0.01, longest=60.0) == 60.0
    assert turn_length(100.0, longest=60.0) == SHORTEST_TURN


def test_the_rotation_takes_as_many_as_it_refreshes_no_slower_than_polls() -> None:
    """Ten symbols trading every second and ninety every 100 s, one slot-rich rotation,
    a poll a second: the frequent ones are sampled, the rare ones polled (a turn of one
    of them would hold a slot for 100 s)."""
    rates = [1.0] * 10 + [0.01] * 90
    count = sample_count(
        rates, slots=5, longest_turn=20.0, changes_per_minute=240, polls_per_second=1.0
    )
    assert 10 <= count < 20
    # Without REST every symbol is sampled; with plenty of REST hardly any.
    assert sample_count(
        rates, slots=5, longest_turn=20.0, changes_per_minute=240, polls_per_second=0.0
    ) == len(rates)
    assert (
        sample_count(
            rates, slots=5, longest_turn=20.0, changes_per_minute=240, polls_per_second=100.0
        )
        <= 1
    )


def test_the_rotation_stops_where_its_messages_run_out() -> None:
    """Slots to spare but few messages: the count is bounded by the message budget
    (two a turn), whatever the slots."""
    rates = [5.0] * 200
    few = sample_count(
        rates, slots=50, longest_turn=20.0, changes_per_minute=12, polls_per_second=1
    )
    many = sample_count(
        rates, slots=50, longest_turn=20.0, changes_per_minute=1200, polls_per_second=1
    )
    assert few < many
