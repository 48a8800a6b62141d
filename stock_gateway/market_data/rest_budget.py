"""The key's REST budget: how many calls a minute the gateway makes of a plan, and the
sliding window that keeps it there in one process (cluster/rest.py keeps one in Redis).

"A minute" here is the plan's window, `FINNHUB_REST_WINDOW` seconds (60: Finnhub
counts a minute; tests shorten it). A sliding window, so no such window ever holds
more calls than the plan allows (a token bucket that starts full would let nearly
twice the limit through in its first minute), plus a per-second cap (Finnhub's 30
calls a second on every plan). The gateway keeps a margin under the plan
(`usable_rate`: 5%, at least one call a minute, for anything else that uses the key)
and counts its window `WINDOW_SLACK` longer: a call counted when its slot was granted
reaches the upstream a little later, and without the slack the first call of a
window, slow to arrive, and the first of the next, quick, could fall into one of the
upstream's windows with a whole plan's calls between them. Slots are granted in the
order they were asked for.
"""

from __future__ import annotations

import asyncio
from collections import deque

from stock_gateway.market_data.provider import UpstreamUnavailable

MINUTE = 60.0  # a clock's minute; the plan's window is FINNHUB_REST_WINDOW, passed in
WINDOW_SLACK = 1.0  # seconds added to our window: more than a call's way upstream


def usable_rate(plan_rate: int) -> int:
    """The calls a minute the gateway makes of a plan's `plan_rate`: a margin kept back."""
    return max(1, plan_rate - max(1, plan_rate // 20))


class SlidingWindowBudget:
    """At most `per_minute` calls in any `window` seconds (the plan's minute; `slack`
    seconds more, to be safe) and `per_second` in any second, FIFO."""

    def __init__(
        self, per_minute: int, window: float, per_second: int = 30, *, slack: float = 0.0
    ) -> None:
        self.per_minute = per_minute
        self._minute = window + slack
        self._windows = ((per_minute, self._minute), (per_second, 1.0))
        self._calls: deque[float] = deque()  # loop times of the calls of the last window
        self._turn = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order

    def _wait(self, now: float) -> float:
        while self._calls and self._calls[0] <= now - self._minute:
            self._calls.popleft()
        wait = 0.0
        for limit, span in self._windows:
            recent = self._calls
            if span < self._minute:
                recent = deque(t for t in self._calls if t > now - span)
            if len(recent) >= limit:
                wait = max(wait, recent[len(recent) - limit] + span - now)
        return wait

    async def acquire(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline), self._turn:
                while True:  # a deadline to wait for, not an event
                    wait = self._wait(loop.time())
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                self._calls.append(loop.time())
        except TimeoutError:
            raise UpstreamUnavailable("the REST budget is spent", self.wait_estimate()) from None

    def wait_estimate(self) -> float:
        return max(self._wait(asyncio.get_running_loop().time()), 1.0)

    def free(self) -> int:
        """Calls that could go now, in the plan's window (the poller's headroom)."""
        self._wait(asyncio.get_running_loop().time())  # forgets the calls aged out
        return max(0, self.per_minute - len(self._calls))
