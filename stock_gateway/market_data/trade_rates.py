"""How often each wanted symbol trades, as far as the upstream socket has seen it.

The feed planner (feed_plan.py) asks three things of it: which symbols a turn on the
socket prices cheaply (those that trade often: the turn ends at the first trade) and
which are better polled (those that rarely trade: a turn would mostly wait); how long a
symbol's turn may last; and how out of date a price probably is by now, since a symbol
that trades once a minute stays current long after its last price, one that trades
every second does not.

A symbol's rate is (trades seen + 1) / (seconds carried on the socket + `PRIOR_SECONDS`):
a symbol never carried counts as trading once every `PRIOR_SECONDS`, and every second
on the socket without a trade lowers it. Past `HORIZON` seconds carried, both counts
shrink in proportion, so a symbol that comes alive (or goes quiet) is noticed within
minutes. Pure bookkeeping: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

PRIOR_SECONDS = 20.0  # a symbol never carried: one trade in this many seconds
HORIZON = 600.0  # seconds carried that the counts remember
MIN_RATE = 1e-4  # trades a second; keeps the arithmetic finite


class TradeRates:
    def __init__(self) -> None:
        self._trades: dict[str, float] = {}  # trades seen on the socket (faded)
        self._carried: dict[str, float] = {}  # seconds on the socket (faded)

    def carried(self, symbols: Iterable[str], seconds: float) -> None:
        """`symbols` were on the socket for the last `seconds`."""
        for symbol in symbols:
            carried = self._carried.get(symbol, 0.0) + seconds
            if carried > HORIZON:
                self._trades[symbol] = self._trades.get(symbol, 0.0) * HORIZON / carried
                carried = HORIZON
            self._carried[symbol] = carried

    def traded(self, symbol: str, trades: int) -> None:
        self._trades[symbol] = self._trades.get(symbol, 0.0) + trades

    def forget(self, symbol: str) -> None:
        self._trades.pop(symbol, None)
        self._carried.pop(symbol, None)

    def rate(self, symbol: str) -> float:
        """Trades a second, as estimated."""
        trades = self._trades.get(symbol, 0.0) + 1.0
        return max(trades / (self._carried.get(symbol, 0.0) + PRIOR_SECONDS), MIN_RATE)

    def expected_lag(self, symbol: str, age: float) -> float:
        """How long a price `age` seconds old has probably been out of date: 0 until
        the symbol's next trade, then growing with time (the mean over trade times)."""
        rate = self.rate(symbol)
        return max(0.0, age - (1.0 - math.exp(-rate * age)) / rate)
