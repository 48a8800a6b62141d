"""Exponential backoff with jitter: the one rule for "wait longer after each failure".

`Backoff(initial, cap)` gives uniform(0, min(cap, initial * 2**n)) ("full jitter"), so
many processes that failed together do not retry together; `floor=0.5` keeps at least
half of each step (a restarted task should not spin). `reset()` after a success.
Used by the upstream feed's reconnects, the supervisor's restarts and the cluster's
duties and leadership. No I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        floor: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._floor = floor
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """The wait after one more failure."""
        delay = self.delay_after(self._attempt + 1)
        if self.initial * 2.0**self._attempt < self.cap:  # past the cap: no need to count
            self._attempt += 1
        return delay

    def delay_after(self, failures: int) -> float:
        """The wait after `failures` failures in a row (1: the first)."""
        ceiling = min(self.cap, self.initial * 2.0 ** max(failures - 1, 0))
        return ceiling * (self._floor + (1 - self._floor) * self._rng())

    def reset(self) -> None:
        self._attempt = 0
