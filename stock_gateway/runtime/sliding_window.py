"""A sliding window: at most `limit` events in any `span` seconds, exactly.

For a share of a budget that must hold in every window, not on average (a token bucket
that starts full lets nearly twice its rate through in its first span). Time is passed
in, so callers use their loop's clock and tests need no sleeps. No I/O, no logging.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    __slots__ = ("_times", "limit", "span")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self._times: deque[float] = deque()  # the events still inside the window

    def wait(self, now: float) -> float:
        """Seconds until one more event fits (0.0: it fits now); spends nothing."""
        while self._times and self._times[0] <= now - self.span:
            self._times.popleft()  # an event exactly `span` ago has left the window
        if len(self._times) < self.limit:
            return 0.0
        return self._times[len(self._times) - self.limit] + self.span - now

    def take(self, now: float) -> float:
        """Count one event if it fits: 0.0, or the seconds until one would."""
        wait = self.wait(now)
        if wait == 0.0:
            self._times.append(now)
        return wait
