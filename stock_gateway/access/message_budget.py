"""A client's message budget on a socket: `CLIENT_MESSAGE_RATE` messages a second in
bursts of `CLIENT_MESSAGE_BURST`. A message over budget is refused (`rate_limited`,
the message ignored); a client that stays over budget longer than
`RATE_LIMIT_CLOSE_AFTER` seconds is to be closed (1008). Time is passed in; no I/O.
"""

from __future__ import annotations

from typing import Literal

from stock_gateway.runtime.token_bucket import TokenBucket

Verdict = Literal["ok", "refuse", "close"]


class MessageBudget:
    def __init__(self, rate: float, burst: float, close_after: float) -> None:
        self.rate = rate
        self._bucket = TokenBucket(rate, burst)
        self._close_after = close_after

    def spend(self, now: float) -> Verdict:
        """Spend one message: within budget, refused, or over it for too long."""
        if self._bucket.allow(now):
            return "ok"
        return "close" if self._bucket.limited_for(now) > self._close_after else "refuse"
