"""A bad upstream cannot take the gateway down: a handshake that never answers is
retried, one enormous message is delivered without freezing anybody, and implausible
trades are skipped one by one while the rest of their frame is delivered."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from bench.abuse import abuse_rig
from stock_gateway.simulator.market import MarketSimulator
from tests.support.abuse import assert_absorbed
from tests.support.helpers import (
    T0,
    TEST_KEY,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)


@pytest.mark.slow  # a handshake timeout and a retry
async def test_an_upstream_that_accepts_and_never_answers_is_retried() -> None:
    accepted = 0
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        held.append(writer)  # keep the TCP connection open, never answer the upgrade

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    market = Market(MarketSimulator(rate=0, token=TEST_KEY), f"ws://127.0.0.1:{port}/")
    settings = settings_for(market, upstream_handshake_timeout=0.3)
    try:
        async with run_gateway(settings) as gateway:

            async def retried() -> bool:
                return accepted >= 3 and (await gateway.health())["reconnects"] >= 2

            await poll_until(retried)
            assert (await gateway.health())["upstream"] == "reconnecting"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_implausible_trades_are_skipped_one_by_one(market: Market) -> None:
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        before = (await gateway.health())["upstream_messages_malformed"]
        year_584m = 18_446_744_073_709_551
        await market.simulator.send_raw(
            '{"type":"trade","data":['
            f'{{"s":"AAPL","p":NaN,"t":{T0},"v":1}},'
            f'{{"s":"AAPL","p":1.5,"t":{year_584m},"v":1}},'
            '{"s":"AAPL","p":1.5,"t":-5,"v":1},'
            f'{{"s":"AAPL","p":-3,"t":{T0},"v":1}},'
            f'{{"s":"AAPL","p":151.25,"t":{T0},"v":1}}]}}'
        )
        update = await client.expect("price_update")
        assert update["data"] == {"price": 151.25, "volume": 1, "timestamp": T0}
        # The next thing it sees is the next trade: nothing implausible slipped through.
        await market.simulator.send_trades([trade("AAPL", 152.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 152.0
        health = await gateway.health()
        assert health["upstream_messages_malformed"] == before + 1  # one frame, counted once
        assert health["reconnects"] == 0


@pytest.mark.slow
async def test_one_enormous_upstream_message_freezes_nobody() -> None:
    async with abuse_rig() as rig:
        sessions: list[aiohttp.ClientSession] = []
        last_prices: list[float] = []

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for message in ws:
                decoded = orjson.loads(message.data)
                if decoded["type"] == "price_update":
                    last_prices.append(decoded["data"]["price"])

        readers = []
        for index in range(200):  # 200 subscribers of the hot symbol, 50 per address
            if index % 50 == 0:
                local = aiohttp.TCPConnector(local_addr=(f"127.0.0.{3 + index // 50}", 0), limit=0)
                sessions.append(aiohttp.ClientSession(connector=local))
            ws = await sessions[-1].ws_connect(rig.ws_url)
            await ws.send_str('{"action":"subscribe","symbols":["HOT"]}')
            readers.append(asyncio.create_task(read(ws)))
        try:
            await rig.simulator.wait_for(lambda: "HOT" in rig.simulator.subscribed_symbols(), 15)
            now_ms = int(time.time() * 1000)
            trades = [
                {"s": "HOT", "p": round(10 + index / 10_000, 4), "t": now_ms, "v": 1}
                for index in range(85_000)
            ]
            frame = orjson.dumps({"type": "trade", "data": trades}).decode()
            assert 3_500_000 < len(frame) < 4 * 1024 * 1024  # under aiohttp's 4 MiB limit

            async def send_it() -> None:
                await rig.simulator.send_raw(frame)

            measure, _ = await rig.measure(send_it, seconds=3)
            assert_absorbed(measure, rss_growth_mib=60)
            newest = round(10 + (len(trades) - 1) / 10_000, 4)  # the last trade's price
            async with asyncio.timeout(10):
                while last_prices.count(newest) < 200:  # noqa: ASYNC110 - counted by readers
                    await asyncio.sleep(0.05)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.wait(readers)
            for session in sessions:
                await session.close()
