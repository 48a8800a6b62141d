"""Helpers of the candle tests: trades at a given time, subscribing to bars, the clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.support.helpers import Client

BAR_KINDS = ("status", "market", "bars", "bar", "subscription")


def now_ms() -> int:
    return int(time.time() * 1000)


def floored_ms(period: int) -> int:
    """Now in ms, floored to a multiple of `period` ms, from one reading of the clock
    (`now_ms() - now_ms() % period` reads it twice and misses the floor by the ms
    between the two readings)."""
    now = now_ms()
    return now - now % period


def trade_at(symbol: str, price: float, t: int, volume: float = 10) -> dict[str, Any]:
    return {"s": symbol, "p": price, "v": volume, "t": t}


async def subscribe_bars(client: Client, symbol: str, interval: str) -> list[dict[str, Any]]:
    """Subscribe; the history the gateway sent."""
    await client.send({"action": "subscribe_bars", "symbols": [symbol], "interval": interval})
    confirmed = await client.expect("subscription")
    assert confirmed == {
        "type": "subscription",
        "status": "subscribed",
        "symbols": [symbol],
        "interval": interval,
    }
    history = await client.expect("bars")
    assert history["symbol"] == symbol and history["interval"] == interval
    bars: list[dict[str, Any]] = history["bars"]
    return bars


async def next_second_boundary() -> int:
    """Sleep into the start of the next second (so a test's trades share one 1s bar)."""
    await asyncio.sleep(1 - (time.time() % 1) + 0.01)
    return floored_ms(1000)
