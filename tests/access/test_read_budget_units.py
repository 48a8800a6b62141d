"""HTTP bar reads: an estimate charged to the gateway's allowance before the work,
settled with the size after; an owner in debt refused before any work."""

from __future__ import annotations

from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.delivery.bar_delivery import ESTIMATED_BAR_BYTES, read_estimate


def test_the_estimate_is_the_limit_or_the_bars_that_fit_the_span() -> None:
    assert read_estimate("1m", 0, 2**50, 10_000) == 10_000 * ESTIMATED_BAR_BYTES
    assert read_estimate("1m", 0, 10 * 60_000, 10_000) == 11 * ESTIMATED_BAR_BYTES
    assert read_estimate("1d", 5, 5, 10) == ESTIMATED_BAR_BYTES  # at least one bar


def test_reads_together_spend_the_gateways_allowance_before_the_work() -> None:
    budget = HistoryBudget(10**9, 10**9, per_gateway_reads=1200)  # a burst of 100 bytes
    assert budget.charge_read("http a", "a", 60, now=0.0) is None
    refusal = budget.charge_read("http b", "b", 60, now=0.0)  # another owner: too
    assert refusal is not None and refusal.retry_after == 1 and refusal.code == "rate_limited"
    assert "for the whole gateway" in refusal.reason
    budget.settle_read("http a", "a", 10, 60, now=0.0)  # it was smaller: 50 given back
    assert budget.charge_read("http b", "b", 60, now=0.0) is None


def test_an_owner_in_debt_is_refused_before_any_work() -> None:
    budget = HistoryBudget(10**9, 100, per_gateway_reads=10**9)
    assert budget.charge_read("http a", "a", 56, now=0.0) is None
    budget.settle_read("http a", "a", 500, 56, now=0.0)  # far more than its allowance
    refusal = budget.charge_read("http a", "a", 56, now=0.0)
    assert refusal is not None and "per address" in refusal.reason
    assert budget.charge_read("http b", "b", 56, now=0.0) is None
