"""Delivery the client chooses: throttled and batched streams over the real server.
A throttled client never gets two updates for a symbol closer than its interval and
always ends on the newest price; a batched one gets every update, in order, in few
frames; options come by message or in the query, and bad ones are refused."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.helpers import T0, Client, GatewayUnderTest, Market, poll_until, trade


async def pump(
    market: Market, symbol: str, count: int, every: float, start: float = 100.0
) -> list[float]:
    """`count` trades for `symbol`, one upstream message each, `every` seconds apart."""
    prices = []
    for index in range(count):
        price = round(start + index * 0.01, 2)
        prices.append(price)
        await market.simulator.send_trades([trade(symbol, price, timestamp=T0 + index)])
        await asyncio.sleep(every)
    return prices


async def collect(
    client: Client,
    kind: str,
    until: float,
    last: Callable[[dict[str, Any]], bool] = lambda message: False,
) -> list[tuple[float, dict[str, Any]]]:
    """Every `kind` message until the loop time `until`, or until one that is `last`
    (the newest trade's, which ends what the test waits for), with its arrival time."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, dict[str, Any]]] = []
    while (left := until - loop.time()) > 0:
        try:
            message = await client.expect(kind, timeout=left)
        except TimeoutError:
            break
        seen.append((loop.time(), message))
        if last(message):
            break
    return seen


def carries(price: float) -> Callable[[dict[str, Any]], bool]:
    """Whether a price_updates frame carries `price`."""
    return lambda batch: any(u["data"]["price"] == price for u in batch["updates"])


async def subscribed(
    gateway: GatewayUnderTest, market: Market, symbols: list[str], **query: int
) -> Client:
    path = "&".join(f"{name}={value}" for name, value in query.items())
    client = await gateway.connect(params=query) if query else await gateway.connect()
    if path:
        confirmed = await client.expect("options")
        assert confirmed == {"type": "options", "throttle_ms": 0, "batch_ms": 0, **query}
    await client.subscribe(*symbols)
    await market.simulator.wait_for(lambda: set(symbols) <= market.simulator.subscribed_symbols())
    return client


@pytest.mark.slow  # real throttle intervals between frames
async def test_throttle_spaces_updates_and_ends_on_the_newest(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await subscribed(gateway, market, ["AAPL"])
    await client.send({"action": "options", "throttle_ms": 200})
    assert await client.expect("options") == {"type": "options", "throttle_ms": 200, "batch_ms": 0}
    loop = asyncio.get_running_loop()
    started = loop.time()
    sending = asyncio.create_task(pump(market, "AAPL", 60, 0.02))  # 50 a second for 1.2 s
    newest = round(100 + 59 * 0.01, 2)  # pump's last price: its arrival ends the wait
    received = await collect(
        client, "price_update", loop.time() + 10, lambda m: m["data"]["price"] == newest
    )
    prices = await sending
    pumped = loop.time() - started  # 1.2 s, or more on a busy machine
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(received)]
    # 200 ms apart as sent; measured on arrival, in a loop the server shares, so allow
    # for the jitter of one delivery (without the throttle the gaps would be 20 ms).
    assert len(received) >= 5 and min(gaps) >= 0.15, gaps
    assert statistics.median(gaps) >= 0.19, gaps
    # One at once, then at most one per 200 ms while trades came, then the newest.
    assert len(received) <= round(pumped * 1000) // 200 + 2, (len(received), pumped)
    assert received[-1][1]["data"]["price"] == prices[-1]  # the newest, once it settled
    got = [message["data"]["price"] for _, message in received]
    assert got == sorted(got)  # never reordered


@pytest.mark.slow  # real batch intervals
async def test_batches_keep_every_update_in_order_in_few_frames(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await subscribed(gateway, market, ["AAPL", "MSFT"], batch_ms=100)
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, float]] = []

    async def send() -> float:
        for index in range(30):
            symbol = "AAPL" if index % 3 else "MSFT"
            price = round(100 + index * 0.01, 2)
            sent.append((symbol, price))
            await market.simulator.send_trades([trade(symbol, price)])
            await asyncio.sleep(0.02)
        return loop.time()

    started = loop.time()
    sending = asyncio.create_task(send())
    batches = await collect(client, "price_updates", started + 10, carries(100.29))  # the last
    sent_for = round((await sending - started) * 1000)  # ms: 600, or more on a busy machine
    updates = [(u["symbol"], u["data"]["price"]) for _, batch in batches for u in batch["updates"]]
    assert updates == sent  # nothing lost, nothing reordered
    # About one per 100 ms while trades came (whole milliseconds: no float rounding).
    assert 4 <= len(batches) <= sent_for // 100 + 2, (len(batches), sent_for)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(batches)]
    assert statistics.median(gaps) >= 0.095, gaps


@pytest.mark.slow  # real batch intervals
@pytest.mark.parametrize("throttle_ms", [0, 50])
async def test_a_batched_client_gets_at_most_one_frame_per_interval(
    market: Market, gateway: GatewayUnderTest, throttle_ms: int
) -> None:
    """Trades for several symbols every few milliseconds: each batch frame carries
    everything pending, so frames are never closer than batch_ms (with or without a
    throttle). Counted from before the first trade to the last frame's arrival, n frames
    at least 100 ms apart need (n - 1) * 100 ms: nothing here depends on jitter."""
    symbols = ["AAPL", "MSFT", "GOOG", "TSLA"]
    query = {"batch_ms": 100, **({"throttle_ms": throttle_ms} if throttle_ms else {})}
    client = await subscribed(gateway, market, symbols, **query)
    loop = asyncio.get_running_loop()

    count = 250

    async def send() -> None:
        for index in range(count):  # ~0.8 s; offers land at every point of an interval
            symbol = symbols[index % len(symbols)]
            await market.simulator.send_trades([trade(symbol, 100 + index / 100)])
            await asyncio.sleep(0.003)

    started = loop.time()
    sending = asyncio.create_task(send())
    # Until the last trade's frame (the newest per symbol is never held back): the
    # count below is of every frame up to then.
    newest = carries(100 + (count - 1) / 100)
    batches = await collect(client, "price_updates", started + 10, newest)
    await sending
    assert len(batches) >= 5, batches
    elapsed_ms = int((batches[-1][0] - started) * 1000)  # whole ms: no float edge cases
    assert len(batches) <= elapsed_ms // 100 + 1, (len(batches), elapsed_ms)
    if throttle_ms:
        for _, batch in batches:
            names = [update["symbol"] for update in batch["updates"]]
            assert len(names) == len(set(names))  # the throttle still keeps one per symbol


@pytest.mark.slow  # real batch and throttle intervals
async def test_batch_and_throttle_send_the_newest_per_symbol(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await subscribed(gateway, market, ["AAPL", "MSFT"], batch_ms=200, throttle_ms=200)
    loop = asyncio.get_running_loop()

    async def send() -> None:
        for index in range(20):
            await market.simulator.send_trades(
                [trade("AAPL", 100 + index), trade("MSFT", 400 + index, timestamp=T0 + index)]
            )
            await asyncio.sleep(0.02)

    sending = asyncio.create_task(send())
    pending = {119, 419}  # the newest of each symbol: once both came, nothing else is due

    def both_newest_came(batch: dict[str, Any]) -> bool:
        pending.difference_update(u["data"]["price"] for u in batch["updates"])
        return not pending

    batches = await collect(client, "price_updates", loop.time() + 10, both_newest_came)
    await sending
    assert 2 <= len(batches) <= 4
    for _, batch in batches:
        symbols = [update["symbol"] for update in batch["updates"]]
        assert len(symbols) == len(set(symbols))  # one per symbol per batch
    last = {u["symbol"]: u["data"]["price"] for _, b in batches for u in b["updates"]}
    assert last == {"AAPL": 119, "MSFT": 419}


async def test_bad_options_are_refused_and_the_connection_kept(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect(params={"batch_ms": "70000"})
    refused = await client.expect("error")
    assert refused["code"] == "invalid_options" and "60000" in refused["message"]
    for bad in (
        {"throttle_ms": -1},
        {"batch_ms": 1.5},
        {"batch_ms": "100"},
        {},
        {"batch_ms": True},
    ):
        await client.send({"action": "options", **bad})
        assert (await client.expect("error"))["code"] == "invalid_options"
    await client.send({"action": "ping"})
    assert await client.expect("pong") == {"type": "pong"}
    # Still the seed's protocol: one price_update per trade.
    await client.subscribe("AAPL")
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await market.simulator.send_trades([trade("AAPL", 1.0), trade("AAPL", 2.0)])
    assert (await client.expect("price_update"))["data"]["price"] == 1.0
    assert (await client.expect("price_update"))["data"]["price"] == 2.0


async def test_snapshots_are_not_delayed_by_a_batch(
    market: Market, gateway: GatewayUnderTest
) -> None:
    first = await subscribed(gateway, market, ["AAPL"])
    await market.simulator.send_trades([trade("AAPL", 150.0)])
    await first.expect("price_update")
    late = await gateway.connect(params={"batch_ms": 60000})
    await late.expect("options")
    started = time.monotonic()
    await late.subscribe("AAPL")
    snapshot = await late.expect("price_update")  # its own type, at once
    assert snapshot["data"]["price"] == 150.0 and time.monotonic() - started < 1.0


async def test_switching_back_sends_what_was_pending(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await subscribed(gateway, market, ["AAPL"], batch_ms=60000)
    await client.send({"action": "options", "throttle_ms": 0})  # one option: the other stays
    assert await client.expect("options") == {
        "type": "options",
        "throttle_ms": 0,
        "batch_ms": 60000,
    }
    await market.simulator.send_trades([trade("AAPL", 1.0)])
    first = await client.expect("price_updates")  # the first batch goes at once
    await market.simulator.send_trades([trade("AAPL", 2.0)])
    await market.simulator.send_trades([trade("AAPL", 3.0)])
    hub = gateway.gateway.running.hub

    async def both_held() -> bool:  # handed to the client's batch, not yet sent
        return hub.stats.price_updates_sent >= 3

    await poll_until(both_held)
    await client.send({"action": "options", "batch_ms": 0})  # throttle_ms stays as it was
    # What the batch held comes at once, as the price updates it shares with the others.
    held = [await client.expect("price_update", timeout=1.0) for _ in range(2)]
    assert [u["data"]["price"] for u in first["updates"] + held] == [1.0, 2.0, 3.0]
    assert await client.expect("options") == {"type": "options", "throttle_ms": 0, "batch_ms": 0}
    await market.simulator.send_trades([trade("AAPL", 4.0)])
    assert (await client.expect("price_update"))["data"]["price"] == 4.0


@pytest.mark.parametrize("per_message", [1, 5])
async def test_default_protocol_is_unchanged_with_several_trades_per_message(
    market: Market, gateway: GatewayUnderTest, per_message: int
) -> None:
    client = await subscribed(gateway, market, ["AAPL", "MSFT"])
    prices = [round(10 + index / 100, 2) for index in range(20)]
    for start in range(0, 20, per_message):
        chunk = prices[start : start + per_message]
        await market.simulator.send_trades(
            [trade("AAPL" if p * 100 % 2 else "MSFT", p) for p in chunk]
        )
    got = [(await client.expect("price_update"))["data"]["price"] for _ in prices]
    assert got == prices  # one frame per trade, in upstream order
