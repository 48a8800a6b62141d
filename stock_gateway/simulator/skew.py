"""A market whose symbols trade at skewed rates (`--skew zipf`), whether or not anyone
listens, as a real market does: a few symbols trade many times a second, most rarely.

The symbols are ranked (the `universe` given, most traded first; any other symbol
joins at the tail the first time a gateway subscribes to it or asks for its quote):
the one of rank r trades at `rate * r**-exponent / sum(k**-exponent)` trades a second
(Zipf). Each symbol opens with a trade at the price the random walk starts from, and
every trade is kept (`history`: time in Unix ms, price as sent), so a benchmark can
tell how long a client's price has been out of date. Pure bookkeeping: no I/O, no clock
but the times it is given.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

SKEWS = ("none", "zipf")


class SkewedMarket:
    def __init__(self, universe: Iterable[str], exponent: float, rng: random.Random) -> None:
        self.exponent = exponent
        self.symbols: list[str] = []
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._cumulative: list[float] = []
        self._random = rng
        self._owed = 0.0  # fractional trades carried between ticks, so low rates still trade
        self._pending = list(universe)

    def join(self, symbol: str) -> bool:
        """Rank `symbol` last if it is new; whether it was."""
        if symbol in self.history:
            return False
        self.symbols.append(symbol)
        self.history[symbol] = []
        weight = len(self.symbols) ** -self.exponent
        self._cumulative.append((self._cumulative[-1] if self._cumulative else 0.0) + weight)
        return True

    def opening(self) -> list[str]:
        """The universe's symbols not yet opened: each needs its opening trade."""
        pending, self._pending = self._pending, []
        return [symbol for symbol in pending if self.join(symbol)]

    def traded(self, symbol: str, at_ms: int, price: float) -> None:
        self.history[symbol].append((at_ms, price))

    def draw(self, rate: float, seconds: float) -> list[str]:
        """The symbols that trade in the next `seconds`, one entry per trade."""
        self._owed += rate * seconds
        count = int(self._owed)
        if not count or not self.symbols:
            return []
        self._owed -= count
        return self._random.choices(self.symbols, cum_weights=self._cumulative, k=count)

    def rate_of(self, symbol: str, rate: float) -> float:
        """Trades a second `symbol` gets at a total `rate` (0 when unknown)."""
        if symbol not in self.history or not self._cumulative:
            return 0.0
        rank = self.symbols.index(symbol) + 1
        return rate * float(rank**-self.exponent) / self._cumulative[-1]

    def latest(self) -> dict[str, tuple[int, float]]:
        """Each symbol's latest trade: (Unix ms, price)."""
        return {symbol: trades[-1] for symbol, trades in self.history.items() if trades}


def ranked(symbols: str) -> list[str]:
    """`--universe A,B,C`: the symbols, most traded first, without repeats."""
    names = (name.strip().upper() for name in symbols.split(","))
    return list(dict.fromkeys(itertools.filterfalse(lambda name: not name, names)))
