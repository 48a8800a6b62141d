"""One bar (an OHLCV candle) and the event that reports it.

Open and close are the prices of the earliest and latest trade by time (a straggler
that is earlier than the open becomes the open). Volume is a float64 sum (about 15
significant digits: crypto's fractional volumes stay exact to far below a satoshi),
rounded to 8 decimal places when sent, and always finite: a sum that would overflow
stays at the largest float (JSON has no infinity; a stored `null` breaks every reader).
`Bar.from_dict` is the one check of a bar read from anywhere (a store, Redis, another
version): anything that is not a candle is refused, never trusted.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from stock_gateway.bars.intervals import Interval

MAX_BAR_BYTES = 192  # a bar's JSON at most (typically ~85): 13-digit t, 17-digit floats


@dataclass(slots=True)
class Bar:
    t: int  # start, Unix ms, a multiple of the interval
    o: float
    h: float
    l: float  # noqa: E741 - the candle field's own name
    c: float
    v: float
    n: int  # trades
    first_t: int = 0  # the trade times behind `o` and `c`
    last_t: int = 0
    gap: bool = False  # its interval overlaps a time the upstream was not received

    @classmethod
    def of(cls, start: int, price: float, volume: float, t: int) -> Bar:
        return cls(start, price, price, price, price, volume, 1, t, t)

    def add(self, price: float, volume: float, t: int) -> None:
        if price > self.h:
            self.h = price
        if price < self.l:
            self.l = price
        if t < self.first_t:
            self.o, self.first_t = price, t
        if t >= self.last_t:  # the same millisecond: the later arrival closes
            self.c, self.last_t = price, t
        self.v = min(self.v + volume, sys.float_info.max)  # inf would be stored as null
        self.n += 1

    def merge(self, other: Bar) -> None:
        """Count `other`'s trades (the same interval and start) in this bar."""
        if other.first_t < self.first_t:
            self.o, self.first_t = other.o, other.first_t
        if other.last_t >= self.last_t:
            self.c, self.last_t = other.c, other.last_t
        self.h, self.l = max(self.h, other.h), min(self.l, other.l)
        self.v = min(self.v + other.v, sys.float_info.max)
        self.n += other.n
        self.gap = self.gap or other.gap

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "o": self.o,
            "h": self.h,
            "l": self.l,
            "c": self.c,
            "v": round(self.v, 8),
            "n": self.n,
            "gap": self.gap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bar:
        """A bar from its `as_dict()`, as stored or published; ValueError (or KeyError,
        TypeError) for anything else, so a reader can skip it: a non-finite or missing
        number, or prices that are not a candle (low <= open, close <= high)."""
        t, n = data["t"], data["n"]
        if not (_is_int(t) and _is_int(n) and n >= 1):
            raise ValueError("a bar's t and n are integers")
        first, high, low, last, volume = (data[name] for name in ("o", "h", "l", "c", "v"))
        if not all(_is_finite(value) for value in (first, high, low, last, volume)):
            raise ValueError("a bar's prices and volume are finite numbers")
        if not (0 < low <= min(first, last) and max(first, last) <= high and volume >= 0):
            raise ValueError("not a candle")
        gap = data.get("gap", False)  # absent: stored or published by an older version
        if not isinstance(gap, bool):
            raise ValueError("a bar's gap is true or false")
        return cls(
            t, float(first), float(high), float(low), float(last), float(volume), n, t, t, gap
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class BarEvent:
    symbol: str
    interval: Interval
    bar: dict[str, Any]  # Bar.as_dict(): a snapshot, unaffected by later trades
    final: bool
    revised: bool = False
    # A late trade's bar older than the history held: only that trade, for the store to
    # merge into the bar it keeps (never delivered: no client holds that bar).
    partial: bool = False
    times: tuple[int, int] = (0, 0)  # the trade times behind `o` and `c`, for the store

    @classmethod
    def of(cls, symbol: str, interval: Interval, bar: Bar, *, final: bool, revised: bool = False,
           partial: bool = False) -> BarEvent:  # fmt: skip
        return cls(symbol, interval, bar.as_dict(), final, revised, partial,
                   (bar.first_t, bar.last_t))  # fmt: skip

    def merged(self, later: BarEvent) -> BarEvent:
        """One event for two reports of the same bar, where one is partial: its trade
        counted in the other (a whole bar stays whole)."""
        bar = Bar.from_dict(self.bar)
        bar.first_t, bar.last_t = self.times
        other = Bar.from_dict(later.bar)
        other.first_t, other.last_t = later.times
        bar.merge(other)
        return BarEvent.of(self.symbol, self.interval, bar, final=self.final or later.final,
                           revised=True, partial=self.partial and later.partial)  # fmt: skip
