"""A token bucket: `rate` tokens per second, holding at most `burst`; starts full.

One small class for every budget in the gateway: a client's messages
(access/message_budget.py), a connection's frames (server/), handshakes per address
and bytes of bar history (runtime/allowances.py) and the upstream's subscribe frames
(finnhub_feed). A token is whatever the budget counts: a message, a frame, a byte.
Time is passed in, so callers use their loop's clock and tests need no sleeps. No I/O,
no logging.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_limited_since", "_updated", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._updated = now
        self._limited_since: float | None = None

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0.0: now); spends nothing. A cost over
        the burst needs a full bucket, and leaves it in debt once taken: a big thing stays
        possible, only rare."""
        self._refill(now)
        short = min(cost, self.burst) - self.tokens
        return short / self.rate if short > 0 else 0.0

    def take(self, now: float, cost: float = 1.0) -> float:
        """Spend `cost` tokens (one message, one frame, so many bytes): 0.0 if they were
        there, else the seconds until they are (nothing spent)."""
        wait = self.wait(now, cost)
        if wait == 0.0:
            # Over budget until the bucket has refilled halfway: one message slipping
            # through between refusals does not make a client well-behaved again.
            if self.tokens >= self.burst / 2:
                self._limited_since = None
            self.tokens -= cost
        elif self._limited_since is None:
            self._limited_since = now
        return wait

    def spend(self, now: float, cost: float) -> None:
        """Spend `cost` tokens whether they are there or not (a debt, repaid by refilling);
        a negative cost gives tokens back, up to the burst."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens - cost)

    def due(self, now: float) -> float:
        """Seconds until a token is there (0.0: one is), spending nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def allow(self, now: float) -> bool:
        return self.take(now) == 0.0

    def limited_for(self, now: float) -> float:
        """How long the bucket has been over its budget (0 when it is within it)."""
        return 0.0 if self._limited_since is None else now - self._limited_since

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst
