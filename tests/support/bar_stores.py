"""Helpers of the bar store tests: a gateway process on a store in its own directory,
HTTP reads, a store that answers when told, and the partial-bar merge every store does."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from stock_gateway.bars.book import Bar, BarEvent, Interval
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.bars.store import BarStore, MemoryStore
from tests.support.bars import floored_ms
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    GatewayProcess,
    Market,
    free_port,
    gateway_subprocess,
)

MINUTE, DAY = 60_000, 86_400_000


def env_for(market: Market, **extra: str) -> dict[str, str]:
    return {
        "FINNHUB_API_KEY": TEST_KEY,
        "FINNHUB_WS_URL": market.url,
        "REST_ENABLED": "false",
        "BAR_STORE_URL": "sqlite:///data/bars.sqlite3",  # relative to the working directory
        **extra,
    }


@asynccontextmanager
async def gateway_on(
    tmp_path: Path, market: Market, **extra: str
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    port = free_port()
    command = (sys.executable, str(PROJECT / "gateway.py"))
    async with gateway_subprocess(tmp_path, port, command, env_for(market, **extra)) as gateway:
        yield gateway, f"http://127.0.0.1:{port}"


async def get_json(base: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(base + path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


class SlowStore(MemoryStore):
    """A store whose open bars come back only when the test says so."""

    def __init__(self, left_open: Bar) -> None:
        self.left_open = left_open
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def open_bars(self, symbol: str) -> list[tuple[Interval, Bar]]:
        self.reading.set()
        await self.release.wait()
        return [("1m", self.left_open)]


async def assert_partial_bars_merge(store: BarStore) -> None:
    """A late trade for a bar older than the book holds arrives as a partial bar (that
    trade alone); the store counts it in the bar it keeps, by trade time and sum."""
    start = floored_ms(MINUTE) - 10 * DAY
    kept = Bar(start, 10.0, 12.0, 9.0, 11.0, 5.0, 2, start + 10_000, start + 50_000)
    recorder = BarRecorder(store, {})
    recorder.record([BarEvent.of("PART", "1m", kept, final=True)])
    assert await recorder.flush()

    def lone(price: float, t: int, volume: float = 1.0) -> BarEvent:
        bar = Bar.of(t - t % MINUTE, price, volume, t)
        return BarEvent.of("PART", "1m", bar, final=True, revised=True, partial=True)

    # Before the open, after the close, and a new low: two of them in one flush.
    recorder.record([lone(8.0, start + 5_000)])
    recorder.record([lone(13.0, start + 55_000, volume=2.0)])
    assert recorder.backlog == 1  # merged while pending
    assert await recorder.flush()
    recorder.record([lone(10.5, start + 30_000)])  # in between: neither open nor close
    recorder.record([lone(7.0, start + 2 * MINUTE + 1)])  # a bar the store lacks: made
    assert await recorder.flush()
    bars = await store.read("PART", "1m", 0, start + DAY, 10)
    assert [(b.t, b.o, b.h, b.l, b.c, b.v, b.n) for b in bars] == [
        (start, 8.0, 13.0, 8.0, 13.0, 9.0, 5),
        (start + 2 * MINUTE, 7.0, 7.0, 7.0, 7.0, 1.0, 1),
    ]
    assert (bars[0].first_t, bars[0].last_t) == (start + 5_000, start + 55_000)
    assert not bars[0].gap
    # An open report written late (an old leader's, after a new one's final) never
    # replaces the final bar; a partial merged into a row left open makes it a gap.
    stale = Bar(start, 10.0, 12.0, 9.0, 11.0, 5.0, 2, start + 10_000, start + 50_000)
    left_open = Bar.of(start + 5 * MINUTE, 20.0, 1.0, start + 5 * MINUTE + 1)
    recorder.record([BarEvent.of("PART", "1m", stale, final=False)])
    recorder.record([BarEvent.of("PART", "1m", left_open, final=False)])
    assert await recorder.flush()
    recorder.record([lone(21.0, start + 5 * MINUTE + 2)])
    assert await recorder.flush()
    bars = await store.read("PART", "1m", 0, start + DAY, 10)
    assert [(b.t, b.n, b.gap) for b in bars] == [
        (start, 5, False), (start + 2 * MINUTE, 1, False), (start + 5 * MINUTE, 2, True),
    ]  # fmt: skip
