"""Attacks on what a client can make the gateway read and keep over HTTP: long bar
histories read back to back from many addresses (GET /bars, Finnhub's candle endpoint),
against a store filled beforehand. Used by tests/abuse/test_abuse_bar_reads.py and
`python -m bench --scenario abuse`."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp

from bench.abuse import AbuseRig, abuse_rig
from stock_gateway.bars.book import BarEvent
from stock_gateway.bars.sqlite_store import SqliteStore

HISTORY_SYMBOL = "HIST"
STORED_BARS = 10_000
READERS = [f"127.0.0.{index}" for index in range(3, 13)]  # ten attacker addresses
READ_PATHS = (
    f"/bars/{HISTORY_SYMBOL}?interval=1m&limit={STORED_BARS}",
    f"/api/v1/stock/candle?symbol={HISTORY_SYMBOL}&resolution=1&from=0&to=2000000000",
)


async def fill_store(path: Path, bars: int = STORED_BARS) -> None:
    """`bars` closed 1m bars of HISTORY_SYMBOL, the newest a minute ago."""
    store = SqliteStore(str(path))
    await store.open()
    try:
        last = (int(time.time()) // 60 - 1) * 60_000
        shape = {"o": 100.25, "h": 101.5, "l": 99.75, "c": 100.5, "v": 1234.0, "n": 12}
        events = [
            BarEvent(HISTORY_SYMBOL, "1m", {"t": last - i * 60_000, **shape}, final=True)
            for i in range(bars)
        ]
        await store.write(events)
    finally:
        await store.close()


@asynccontextmanager
async def rig_with_history(env: dict[str, str] | None = None) -> AsyncIterator[AbuseRig]:
    """The abuse rig on a store holding STORED_BARS bars of HISTORY_SYMBOL."""
    async with AsyncExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="read-attack-")))
        await fill_store(folder / "bars.sqlite3")
        url = f"sqlite:///{folder / 'bars.sqlite3'}"
        yield await stack.enter_async_context(abuse_rig({"BAR_STORE_URL": url, **(env or {})}))


async def history_reads(
    rig: AbuseRig, statuses: Counter[str], seconds: float, per_address: int = 3
) -> None:
    """Every READERS address reads the whole history back to back, `per_address` at
    once, both paths, for `seconds`, counting the answers' `statuses` ("200", "429",
    and "429 without Retry-After", which should never be) as they come."""
    deadline = time.monotonic() + seconds

    async def reader(session: aiohttp.ClientSession, path: str) -> None:
        while time.monotonic() < deadline:
            async with session.get(rig.base_url + path) as response:
                await response.read()
                status = str(response.status)
                if response.status == 429 and "Retry-After" not in response.headers:
                    status += " without Retry-After"
                statuses[status] += 1
                if response.status == 429:
                    await asyncio.sleep(0.05)  # a client's retry, not a synchronisation

    async with AsyncExitStack() as stack:
        readers = []
        for address in READERS:
            connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            readers += [reader(session, READ_PATHS[n % 2]) for n in range(per_address)]
        await asyncio.gather(*readers)
