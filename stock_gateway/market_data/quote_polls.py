"""The poller's pace (market_data/quotes.py): which symbol the feed planner's polls
fetch next, and when.

Polls are evenly spaced at `per_minute` (one at a time, never a burst), and only while
the key's budget has more than `POLL_HEADROOM` calls free (`headroom`, when the budget
can say): polls spend whatever subscribers, lookups and forwarded calls leave of the
whole budget, never more, and a subscriber's ask never finds the budget spent by polls.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from stock_gateway.market_data.provider import CallBudget
from stock_gateway.market_data.rest_budget import SlidingWindowBudget
from stock_gateway.runtime.sliding_window import SlidingWindow

POLL_HEADROOM = 4  # calls polls leave free: a few new subscribers' asks go at once
FULL_RETRY = 1.0  # seconds before looking again at a budget with no room to poll


class PollPace:
    def __init__(
        self, per_minute: int, window: float, headroom: Callable[[], int] | None = None
    ) -> None:
        self.enabled = per_minute > 0  # `per_minute`: in the plan's window (FINNHUB_REST_WINDOW)
        self.per_second = per_minute / window if self.enabled else 0.0  # at most
        self._spaced = SlidingWindow(1, window / max(per_minute, 1))
        self._headroom = headroom  # calls the key's budget has free now (None: unknown)
        self._symbols: list[str] = []  # to poll, most urgent first

    def __bool__(self) -> bool:
        return bool(self._symbols)

    def replace(self, symbols: list[str]) -> bool:
        """Poll these from now on (none if polling is off); whether any are to poll."""
        self._symbols = symbols if self.enabled else []
        return bool(self._symbols)

    def wait(self, now: float) -> float:
        """Seconds until the next poll may go (0: now)."""
        if wait := self._spaced.wait(now):
            return wait
        full = self._headroom is not None and self._headroom() <= POLL_HEADROOM
        return FULL_RETRY if full else 0.0

    def answered(self, symbol: str) -> None:
        """A quote of `symbol` just came, whoever asked: it is not due for a poll now
        (the list was planned before that answer came)."""
        self._symbols = [s for s in self._symbols if s != symbol]

    def take(self, now: float, busy: Container[str]) -> str | None:
        """The most urgent symbol not `busy` (already being fetched: joining that fetch
        is the poll), its poll counted; None when every one of them is busy."""
        for symbol in self._symbols:
            if symbol not in busy:
                self._symbols = [s for s in self._symbols if s != symbol]
                self._spaced.take(now)
                return symbol
        self._symbols = []
        return None


def poll_pace(budget: CallBudget, whole: int, reserved: int, window: float) -> PollPace:
    """Polls at `whole` a minute within what the budget has free, when it can say (this
    process's window); a cluster's shared budget cannot: `reserved` a minute alone."""
    if isinstance(budget, SlidingWindowBudget):
        return PollPace(whole, window, budget.free)
    return PollPace(reserved, window)
