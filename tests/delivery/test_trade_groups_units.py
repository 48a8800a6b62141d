"""`TradeGroups` (delivery/trade_groups.py) and the broadcaster's delivery of raw trades
to Finnhub-dialect clients: the newest trades of each symbol, encoded once per message,
delivered group by group with the event loop running in between, and each address's
symbol sets counted."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import orjson

from hub import UpdateBatch
from stock_gateway.delivery.finnhub_encoder import FINNHUB
from stock_gateway.delivery.trade_groups import TradeGroups
from stock_gateway.market_data.model import NOT_SENT, Conditions, Trade
from stock_gateway.market_data.trade_wire import MAX_TRADES_PER_SYMBOL_PER_MESSAGE
from stock_gateway.protocol import Frame
from tests.support.fakes import WAIT, make_hub
from tests.support.helpers import T0

NEWEST = MAX_TRADES_PER_SYMBOL_PER_MESSAGE


@dataclass(eq=False)
class Member:
    """A trade follower: records each frame, and the loop tick it came at."""

    address: str
    symbols: set[str] = field(default_factory=set)
    frames: list[Frame] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    clock: list[int] = field(default_factory=lambda: [0])
    arrived: asyncio.Event | None = None

    def send(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.ticks.append(self.clock[0])
        if self.arrived is not None:
            self.arrived.set()


def follow(groups: TradeGroups, member: Member, *symbols: str) -> Member:
    member.symbols = set(symbols)
    groups.place(member, FINNHUB)
    return member


def trades_of(symbols: list[str], count: int) -> list[Trade]:
    conditions: list[Conditions] = [("1",), None, NOT_SENT, ()]
    return [
        Trade(
            symbol=symbols[index % len(symbols)],
            price=10 + index / 100,
            timestamp=T0 + index,
            volume=1.0,
            conditions=conditions[index % 4],
        )
        for index in range(count)
    ]


def test_a_group_gets_the_newest_trades_of_each_symbol_in_upstream_order() -> None:
    groups = TradeGroups()
    both = follow(groups, Member("a"), "X", "Y")
    only_y = follow(groups, Member("b"), "Y")
    trades = trades_of(["X", "Y", "X", "Z"], 1000)  # X: 500, Y: 250, Z: 250
    assert groups.deliver(trades) == 2
    newest: list[Trade] = []
    for symbol in ("X", "Y"):
        newest += [trade for trade in trades if trade.symbol == symbol][-NEWEST:]
    newest.sort(key=trades.index)  # upstream order
    # The same bytes as the whole message encoded at once, as Finnhub's would be.
    assert [frame.payload for frame in both.frames] == [as_finnhub_sends(newest)]
    only_y_newest = [trade for trade in newest if trade.symbol == "Y"]
    assert [frame.payload for frame in only_y.frames] == [as_finnhub_sends(only_y_newest)]
    sent = orjson.loads(both.frames[0].payload)
    assert sent["type"] == "trade" and len(sent["data"]) == 2 * NEWEST
    # `c` as it came: a list, `null`, or left out.
    assert {orjson.dumps(item.get("c", "absent")) for item in sent["data"]} == {
        b'"absent"',
        b"null",
        b'["1"]',
    }


def as_finnhub_sends(trades: list[Trade]) -> bytes:
    """The whole message encoded at once, built here on its own."""
    data = []
    for trade in trades:
        item: dict[str, object] = {"s": trade.symbol, "p": trade.price, "t": trade.timestamp}
        item["v"] = trade.volume
        if trade.conditions is not NOT_SENT:
            item["c"] = trade.conditions
        data.append(item)
    return orjson.dumps({"type": "trade", "data": data})


def test_each_address_counts_its_distinct_symbol_sets() -> None:
    groups = TradeGroups()
    first = follow(groups, Member("a"), "X")
    second = follow(groups, Member("a"), "X")  # the same set: one group
    elsewhere = follow(groups, Member("b"), "Y")
    assert (groups.sets_of("a"), groups.sets_of("b")) == (1, 1)
    # Joining a set the address follows, or none, adds none.
    assert not groups.would_add_set(elsewhere, FINNHUB, set())
    assert not groups.would_add_set(Member("a"), FINNHUB, {"X"})
    # A set new to the address: one more, unless its old group goes with it.
    assert groups.would_add_set(first, FINNHUB, {"X", "Y"})  # `second` keeps {X}
    assert groups.would_add_set(Member("a"), FINNHUB, {"Y"})  # another address's set
    assert not groups.would_add_set(elsewhere, FINNHUB, {"Y", "Z"})  # its {Y} goes
    follow(groups, second, "X", "Y")
    assert groups.sets_of("a") == 2
    follow(groups, first)  # it leaves everything
    follow(groups, second)
    assert (groups.sets_of("a"), groups.sets_of("b")) == (0, 1)
    follow(groups, elsewhere)
    assert not groups


async def test_the_broadcaster_lets_the_loop_run_between_groups() -> None:
    """Hundreds of groups and one message of 20,000 trades: delivered in slices with
    the event loop running in between, not in one go."""
    hub = make_hub()
    clock, arrived = [0], asyncio.Event()
    symbols = [f"S{index:02}" for index in range(25)]
    members = [
        follow(hub.trades, Member(f"10.0.0.{index % 4}", clock=clock, arrived=arrived), *pair)
        for index, pair in enumerate(itertools.combinations(symbols, 2))
    ]
    assert len(members) == 300

    async def tick() -> None:
        while True:
            clock[0] += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    broadcaster = asyncio.create_task(hub.broadcast_forever())
    try:
        await hub.publish(UpdateBatch([], time.perf_counter(), trades=trades_of(symbols, 20_000)))
        async with asyncio.timeout(WAIT * 10):
            while not all(member.frames for member in members):
                arrived.clear()
                await arrived.wait()
    finally:
        for task in (ticker, broadcaster):
            task.cancel()
        await asyncio.gather(ticker, broadcaster, return_exceptions=True)
    ticks = [tick for member in members for tick in member.ticks]
    assert max(ticks) - min(ticks) >= 2, "delivered in one go, the loop never ran"
    assert all(len(member.frames) == 1 for member in members)
    first = orjson.loads(members[0].frames[0].payload)["data"]
    assert len(first) == 2 * NEWEST and {trade["s"] for trade in first} == {"S00", "S01"}
