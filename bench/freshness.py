"""The symbols scenario's yardstick: how long the price a client holds has been out of
date, against the simulated market's every trade (the simulator's `GET /history`).

A client's price is 0 s out of date while it is the market's latest trade; otherwise
it is as old as the first trade it missed. A client that never got a price is as late
as its subscription. Lags are counted in tenths of a second; quantiles weigh each
(client, symbol) sample alike (by demand) or each symbol alike. Pure functions.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping

Held = tuple[int, float, bool]  # (the price's time in Unix ms, the price, came by quote)
History = tuple[list[int], list[float]]  # one symbol's trades: times (ms) and prices


def histories(raw: Mapping[str, list[list[float]]]) -> dict[str, History]:
    return {
        symbol: ([int(t) for t, _ in trades], [float(p) for _, p in trades])
        for symbol, trades in raw.items()
    }


def held_index(history: History, held: Held) -> int:
    """The index of the trade a client's price is (-1: before every trade)."""
    times, prices = history
    at_ms, price, by_quote = held
    last = bisect_right(times, at_ms + (999 if by_quote else 0)) - 1  # quotes say seconds
    index = last
    while index >= 0 and times[index] >= at_ms - (0 if by_quote else 1) and prices[index] != price:
        index -= 1
    return index if index >= 0 and prices[index] == price else last


def lag_seconds(history: History, held: Held | None, sample_ms: int, since_ms: int) -> float:
    times, _ = history
    if held is None:
        return max(0.0, (sample_ms - since_ms) / 1000)
    index = held_index(history, held)
    if index + 1 < len(times) and times[index + 1] <= sample_ms:
        return (sample_ms - times[index + 1]) / 1000
    return 0.0


def latest_at(history: History, at_ms: int) -> Held | None:
    """The market's latest trade at `at_ms`, as a client polling then would hold it."""
    times, prices = history
    index = bisect_right(times, at_ms) - 1
    return (times[index], prices[index], False) if index >= 0 else None


def add_lag(counts: Counter[int], seconds: float) -> None:
    counts[round(seconds * 10)] += 1


def quantiles(
    per_symbol: Mapping[str, Counter[int]], *, by_symbol: bool = False
) -> dict[str, float]:
    """p50/p95/p99/max of the lags, each sample weighted alike (by demand: symbols with
    more clients count more) or, `by_symbol`, each symbol weighing one."""
    weighted: list[tuple[int, float]] = []
    for counts in per_symbol.values():
        total = sum(counts.values())
        for tenths, count in counts.items():
            weighted.append((tenths, count / total if by_symbol else float(count)))
    return {name: _quantile(weighted, q) for name, q in QUANTILES}


QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))


def _quantile(weighted: Iterable[tuple[int, float]], q: float) -> float:
    ordered = sorted(weighted)
    total = sum(weight for _, weight in ordered)
    if not total:
        return 0.0
    running = 0.0
    for tenths, weight in ordered:
        running += weight
        if running >= q * total - 1e-9:
            return tenths / 10
    return ordered[-1][0] / 10
