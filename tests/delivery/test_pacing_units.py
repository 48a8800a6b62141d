"""Pacing and delivery groups, without sockets: the work of paced clients is shared
(one offer per group, one encoding per flush), nothing is lost when a client moves
between groups and moving costs no memory of its own, a batch never outgrows its byte
cap, and the clock flushes what is due."""

from __future__ import annotations

import asyncio

import orjson

from stock_gateway import protocol
from stock_gateway.delivery.pacing import (
    DeliveryClock,
    DeliveryGroups,
    Outgoing,
    Pacing,
)
from stock_gateway.protocol import DeliveryOptions, Frame
from tests.support.fakes import DEFAULTS


class Member:
    def __init__(self, options: DeliveryOptions, *symbols: str) -> None:
        self.options = options
        self.symbols = set(symbols)
        self.received: list[Outgoing] = []

    def emit(self, outgoing: Outgoing) -> None:
        self.received.append(outgoing)


def update(symbol: str, price: float) -> Frame:
    return protocol.price_update_message(symbol, price, 1, 1_800_000_000_000)


def prices(outgoing: list[Outgoing]) -> list[float]:
    seen: list[float] = []
    for batch in outgoing:
        for frame in batch:
            body = orjson.loads(frame.payload)
            updates = body["updates"] if body["type"] == "price_updates" else [body]
            seen.extend(item["data"]["price"] for item in updates)
    return seen


async def test_identical_clients_share_one_group_and_the_same_bytes() -> None:
    clock = DeliveryClock()
    groups = DeliveryGroups(clock, lambda: None, DEFAULTS.max_batch_bytes)
    batched = DeliveryOptions(batch_ms=50)
    members = [Member(batched, "AAPL", "MSFT") for _ in range(100)]
    for member in members:
        groups.place(member)
    assert len(groups) == 1 and len(groups.of_symbol("AAPL")) == 1
    (group,) = groups.of_symbol("AAPL")
    group.pacing.offer("AAPL", update("AAPL", 1.0))  # due at once: the first batch
    first = {id(member.received[0][0]) for member in members}
    assert len(first) == 1  # one frame object (one encoding) for all hundred
    other = Member(DeliveryOptions(batch_ms=50), "AAPL")  # other symbols: another group
    groups.place(other)
    assert len(groups) == 2 and len(groups.of_symbol("AAPL")) == 2


async def test_a_client_that_moves_takes_what_its_group_held() -> None:
    clock = DeliveryClock()
    groups = DeliveryGroups(clock, lambda: None, DEFAULTS.max_batch_bytes)
    options = DeliveryOptions(batch_ms=60_000)
    mover, stayer = Member(options, "AAPL"), Member(options, "AAPL")
    groups.place(mover)
    groups.place(stayer)
    group = groups.group_of(mover)
    assert group is not None and group is groups.group_of(stayer)
    pacing = group.pacing
    for price in (1.0, 2.0, 3.0):  # 1.0 goes at once, 2.0 and 3.0 wait a minute
        pacing.offer("AAPL", update("AAPL", price))
    mover.symbols.add("MSFT")
    groups.place(mover)
    assert prices(mover.received) == [1.0, 2.0, 3.0]  # nothing lost by moving
    assert prices(stayer.received) == [1.0]  # the others still wait for their batch
    assert groups.group_of(mover) is not groups.group_of(stayer)
    groups.remove(stayer)
    groups.remove(mover)
    assert len(groups) == 0 and not groups.of_symbol("AAPL")


async def test_the_clock_flushes_a_throttled_symbol_with_its_newest_price() -> None:
    clock = DeliveryClock(tick=0.005)
    runner = asyncio.create_task(clock.run())
    sent: list[Outgoing] = []
    flushed = asyncio.Event()

    def emit(outgoing: Outgoing) -> None:
        sent.append(outgoing)
        flushed.set()

    conflated = []
    pacing = Pacing(
        DeliveryOptions(throttle_ms=50),
        clock,
        emit,
        lambda: conflated.append(1),
        DEFAULTS.max_batch_bytes,
    )
    try:
        pacing.offer("AAPL", update("AAPL", 1.0))  # window open: at once
        flushed.clear()
        for price in (2.0, 3.0, 4.0):
            pacing.offer("AAPL", update("AAPL", price))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(flushed.wait(), 1)
        assert loop.time() - started >= 0.04
        assert prices(sent) == [1.0, 4.0] and len(conflated) == 2
        assert sent[-1][0].symbol == "AAPL"  # a single update names its symbol (to conflate)
    finally:
        runner.cancel()
        await asyncio.wait([runner])


async def test_a_batch_of_every_update_goes_out_early_at_its_byte_cap() -> None:
    sent: list[Outgoing] = []
    options = DeliveryOptions(batch_ms=60_000)
    pacing = Pacing(options, DeliveryClock(), sent.append, lambda: None, max_batch_bytes=2000)
    offered = [update("AAPL", 100.0 + n) for n in range(101)]  # ~100 bytes each
    for frame in offered:  # the first goes at once, the rest would wait a minute
        pacing.offer("AAPL", frame)
    seen = prices(sent)
    assert seen == [100.0 + n for n in range(len(seen))]  # in order, none skipped
    batches = [frame.payload for outgoing in sent for frame in outgoing]
    assert len(batches) >= 5  # full ones, without waiting for batch_ms
    assert all(len(payload) < 2000 + 200 for payload in batches)
    pacing.flush(0)  # the rest, when due: nothing lost, nothing reordered
    assert prices(sent) == [100.0 + n for n in range(101)]


async def test_a_client_that_moves_again_and_again_takes_shared_frames_not_copies() -> None:
    groups = DeliveryGroups(DeliveryClock(), lambda: None, DEFAULTS.max_batch_bytes)
    options = DeliveryOptions(batch_ms=60_000)
    anchor = Member(options, "AAPL")
    movers = [Member(options, "AAPL") for _ in range(20)]
    for member in [anchor, *movers]:
        groups.place(member)
    anchors = groups.group_of(anchor)
    assert anchors is not None
    offered = [update("AAPL", price) for price in (1.0, 2.0, 3.0)]
    for frame in offered:  # 1.0 goes at once; 2.0 and 3.0 wait for the batch
        anchors.pacing.offer("AAPL", frame)
    for _ in range(50):
        for mover in movers:
            mover.symbols.add("MSFT")
            groups.place(mover)
            mover.symbols.discard("MSFT")
            groups.place(mover)
    for mover in movers:
        # Nothing lost, and what it took on moving is the frames everyone shares, never
        # a batch encoded for it: moving costs no memory of its own.
        assert 2.0 in prices(mover.received) and 3.0 in prices(mover.received)
        handed = [frame for outgoing in mover.received[1:] for frame in outgoing]
        assert handed and all(any(f is o for o in offered[1:]) for f in handed)


async def test_a_mover_is_not_handed_what_its_new_group_will_send_it() -> None:
    groups = DeliveryGroups(DeliveryClock(), lambda: None, DEFAULTS.max_batch_bytes)
    options = DeliveryOptions(batch_ms=60_000)
    mover, stayer = Member(options, "AAPL"), Member(options, "AAPL")
    other = Member(options, "AAPL", "MSFT")
    for member in (mover, stayer, other):
        groups.place(member)
    movers, others = groups.group_of(mover), groups.group_of(other)
    assert movers is not None and others is not None
    early, shared = update("AAPL", 1.0), update("AAPL", 2.0)
    movers.pacing.offer("AAPL", update("AAPL", 0.5))  # first batches go at once
    others.pacing.offer("AAPL", update("AAPL", 0.5))
    movers.pacing.offer("AAPL", early)  # before `other`'s window: only here
    for group in (movers, others):
        group.pacing.offer("AAPL", shared)  # in both windows
    mover.symbols.add("MSFT")
    groups.place(mover)  # joins `other`'s group, whose batch will carry 2.0
    assert mover.received[-1] == [early]
