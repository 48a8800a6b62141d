"""The user's candles are the user's: demo mode keeps its own store
(`data/demo-bars.sqlite3`), and a store remembers which feed wrote it, so a gateway on
Finnhub's feed never serves the simulator's candles, even given the demo's store by
BAR_STORE_URL. (That no test writes into the checkout's data/ is conftest.py's check.)"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest

from stock_gateway.bars.sqlite_store import SqliteStore
from stock_gateway.bars.store import StoreError
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    Market,
    free_port,
    gateway_subprocess,
    poll_until,
    run_to_exit,
)


async def test_a_store_kept_by_one_feed_refuses_the_other(tmp_path: Path) -> None:
    path = tmp_path / "bars.sqlite3"
    demo = SqliteStore(str(path))
    await demo.open()
    await demo.claim("demo")
    await demo.close()
    again = SqliteStore(str(path))
    await again.open()
    await again.claim("demo")  # the same feed comes back to its store
    with pytest.raises(StoreError, match="demo feed"):
        await again.claim("finnhub")
    await again.close()


def stored_symbols(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:  # a WAL reader never blocks the gateway's writer
        return {row[0] for row in db.execute("SELECT DISTINCT symbol FROM bars")}


def real_env(market: Market, **extra: str) -> dict[str, str]:
    return {
        "FINNHUB_API_KEY": TEST_KEY,
        "FINNHUB_WS_URL": market.url,
        "REST_ENABLED": "false",
        **extra,
    }


@pytest.mark.slow
async def test_a_real_gateway_after_a_demo_run_serves_none_of_the_demos_candles(
    tmp_path: Path, market: Market
) -> None:
    command = (sys.executable, str(PROJECT / "gateway.py"))
    demo_store = tmp_path / "data" / "demo-bars.sqlite3"
    port = free_port()
    demo_env = {"DEMO": "true", "DEMO_TRADE_RATE": "200"}
    async with (
        gateway_subprocess(tmp_path, port, command, demo_env),
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws,
    ):
        await ws.send_json({"action": "subscribe", "symbols": ["AAPL"]})

        async def demo_candles_stored() -> bool:
            return "AAPL" in stored_symbols(demo_store)

        await poll_until(demo_candles_stored)
    assert not (tmp_path / "data" / "bars.sqlite3").exists()

    # The same directory, Finnhub's feed (the scripted market): the default store is
    # another file, and it has no candle of the simulator's.
    port = free_port()
    async with (
        gateway_subprocess(tmp_path, port, command, real_env(market)),
        aiohttp.ClientSession() as session,
    ):
        for interval in ("1s", "1m", "1d"):
            url = f"http://127.0.0.1:{port}/bars/AAPL?interval={interval}"
            async with session.get(url) as response:
                assert (await response.json())["s"] == "no_data", interval

    # Given the demo's store on purpose, a real gateway refuses to start, in one line.
    code, output = await run_to_exit(
        *command, "--port", str(free_port()), cwd=tmp_path,
        **real_env(market, BAR_STORE_URL="sqlite:///data/demo-bars.sqlite3"),
    )  # fmt: skip
    assert code == 2, output
    assert "BAR_STORE_URL" in output and "demo feed" in output
    assert "Traceback" not in output
