"""What turns on the upstream socket cost, for the feed planner (feed_plan.py): how long
a sampled symbol's turn lasts, how many of the symbols past the socket the rotation
should serve rather than REST polls, and which (`keep_best`: the most often trading,
without flapping).

A turn ends at the symbol's first trade, so refreshing a symbol by turns costs about
one of its trade gaps of a slot's time, and two messages (a subscribe and an
unsubscribe) per turn that ends with a trade. A turn lasts `TURN_TRADE_GAPS` of the
symbol's trade gaps (86% of turns end with a trade), at least `SHORTEST_TURN` seconds
and at most the longest turn (`SAMPLE_TURN_SECONDS`). Pure arithmetic over trade rates
(trade_rates.py) and sets: no clock, no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

TURN_TRADE_GAPS = 2.0
SHORTEST_TURN = 2.0


def turn_length(rate: float, longest: float) -> float:
    """Seconds a turn of a symbol trading `rate` times a second lasts at most."""
    return min(longest, max(SHORTEST_TURN, TURN_TRADE_GAPS / rate))


def sample_count(
    rates: Sequence[float],
    *,
    slots: int,
    longest_turn: float,
    changes_per_minute: float,
    polls_per_second: float,
) -> int:
    """How many of the symbols trading at `rates` (most often first) to sample: the
    count at which the slower of the two refreshes comes soonest, the first ones' by
    turns on `slots` slots within `changes_per_minute` messages, the rest's by polls."""
    if polls_per_second <= 0:
        return len(rates)
    per_change = changes_per_minute / 60.0
    slot_seconds = messages = 0.0
    best = len(rates) / polls_per_second  # every one polled
    for count, rate in enumerate(rates, start=1):
        slot_seconds += 1.0 / rate
        messages += 2.0 / (1.0 - math.exp(-rate * turn_length(rate, longest_turn)))
        turns_every = max(slot_seconds / slots, messages / per_change)
        slower = max(turns_every, (len(rates) - count) / polls_per_second)
        if slower > best:
            return count - 1
        best = slower
    return len(rates)


def keep_best(
    current: set[str], ranked: list[str], cap: int, score: Callable[[str], float], margin: float
) -> set[str]:
    """The `cap` first of `ranked` (best `score` first), keeping members of `current`
    unless a challenger's score is over `margin` above the weakest's (no flapping)."""
    allowed = set(ranked)
    kept = {s for s in current if s in allowed}
    while len(kept) > cap:
        kept.discard(min(kept, key=lambda s: (score(s), s)))
    for symbol in ranked:
        if symbol in kept:
            continue
        if len(kept) < cap:
            kept.add(symbol)
            continue
        weakest = min(kept, key=lambda s: (score(s), s), default=None)
        if weakest is None or score(symbol) <= score(weakest) * (1 + margin):
            break
        kept.discard(weakest)
        kept.add(symbol)
    return kept
