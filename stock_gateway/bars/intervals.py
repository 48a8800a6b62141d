"""The intervals bars are built in, and where each bar starts and ends.

Every interval up to an hour is aligned to UTC boundaries (a 1h bar starts at a whole
hour of UTC). A daily bar (`1d`) is its exchange's calendar day in the exchange's own
time zone: America/New_York for US stocks, UTC for crypto and forex. A symbol's
exchange is decided by its name: Finnhub names crypto and forex symbols with their
venue (`BINANCE:BTCUSDT`, `OANDA:EUR_USD`), so a symbol with a `:` counts in UTC days
and every other symbol is a US stock. Every trade the feed delivers counts, extended
hours included: the gateway filters no trade by session, so a daily bar agrees with
the live prices and the intraday bars a chart shows beside it (a regular-session-only
close differs from the exchange's official close after the bell).
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

Interval = Literal["1s", "1m", "5m", "15m", "30m", "1h", "1d"]
INTERVALS: tuple[Interval, ...] = get_args(Interval)
INTERVAL_MS: dict[Interval, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "1d": 86_400_000,  # nominal: a day is its exchange's calendar day (day_of)
}
NEW_YORK = ZoneInfo("America/New_York")


def exchange_zone(symbol: str) -> ZoneInfo | None:
    """A symbol's exchange time zone for daily bars: None (UTC) for crypto and forex,
    whose symbols name their venue (`BINANCE:BTCUSDT`, `OANDA:EUR_USD`), and New York
    for the rest, which Finnhub's free plan carries as US stocks."""
    return None if ":" in symbol else NEW_YORK


@functools.lru_cache(maxsize=4096)
def _day(zone: ZoneInfo | None, day: int) -> tuple[int, int]:
    """The [start, end) in Unix ms of the calendar day containing UTC day `day`'s noon."""
    if zone is None:
        return day * 86_400_000, (day + 1) * 86_400_000
    noon = datetime.fromtimestamp(day * 86_400 + 43_200, zone)
    start = datetime(noon.year, noon.month, noon.day, tzinfo=zone)
    end = start + timedelta(days=1)  # wall-clock: 23 or 25 hours across a DST change
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def day_of(symbol: str, t: int) -> tuple[int, int]:
    """The [start, end) of the exchange's calendar day that contains `t` (Unix ms)."""
    zone = exchange_zone(symbol)
    start, end = _day(zone, t // 86_400_000)
    if t < start:
        start, end = _day(zone, t // 86_400_000 - 1)
    elif t >= end:
        start, end = _day(zone, t // 86_400_000 + 1)
    return start, end


def bar_span(symbol: str, interval: Interval, t: int) -> tuple[int, int]:
    """The [start, end) of the bar of `interval` that contains `t`."""
    if interval == "1d":
        return day_of(symbol, t)
    length = INTERVAL_MS[interval]
    start = t - t % length
    return start, start + length
