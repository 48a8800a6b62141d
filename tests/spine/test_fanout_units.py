"""Fan-out units: `ClientConnection` (fast path, outbox, conflation, eviction) and `Hub`
(reference counts, limits, snapshots, trades), on in-memory fakes instead of sockets.

Synchronisation is by events the fakes set; an `await asyncio.sleep(0)` only lets a task
take one step, and the few real sleeps wait out a deadline to show that nothing fires.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import orjson
import pytest

from hub import Hub, UpdateBatch
from stock_gateway import protocol
from stock_gateway.delivery import sockets
from stock_gateway.delivery.encoders import WS
from stock_gateway.delivery.outbox import ClientConnection, OutboxLimits
from stock_gateway.delivery.stats import FanoutStats
from stock_gateway.market_data.model import Trade
from stock_gateway.protocol import CLOSE_TRY_AGAIN_LATER, Frame
from stock_gateway.relay.local import LocalRelay
from tests.support.fakes import DEFAULTS, WAIT, FakeSocket, FakeWriter, make_feed, make_hub
from tests.support.helpers import assert_hub_consistent

GRACE = 0.05  # CLOSE_GRACE_SECONDS, shortened


# -- fakes ---------------------------------------------------------------------------------


class CountingObserver:
    def __init__(self) -> None:
        self.observations: list[float] = []

    def observe(self, amount: float) -> None:
        self.observations.append(amount)


# -- helpers -------------------------------------------------------------------------------


def update(symbol: str, seq: int) -> Frame:
    """A price update whose timestamp is its sequence number."""
    return protocol.price_update_message(symbol, 100.0 + seq, 1.0, seq)


def control(n: int) -> Frame:
    return protocol.error_message("rate_limited", f"control {n}")


def updates_seen(payloads: list[bytes]) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    for payload in payloads:
        message = orjson.loads(payload)
        if message["type"] == "price_update":
            seen.append((message["symbol"], message["data"]["timestamp"]))
    return seen


async def wait_until(changed: asyncio.Event, predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds, re-checking each time `changed` is set."""
    async with asyncio.timeout(WAIT):
        while not predicate():
            changed.clear()
            await changed.wait()


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


def local_relay(hub: Hub) -> LocalRelay:
    """The single-process relay in front of `hub`, its upstream never started."""
    return LocalRelay(make_feed(hub.interest), hub)


def refuse_upstream(hub: Hub, symbol: str) -> None:
    hub.upstream_refused(symbol)


@dataclass
class Rig:
    client: ClientConnection
    socket: FakeSocket
    writer: FakeWriter | None
    stats: FanoutStats


@dataclass
class Rigs:
    made: list[Rig] = field(default_factory=list)

    def make(
        self,
        *,
        writer: FakeWriter | None,
        socket: FakeSocket | None = None,
        outbox_size: int = 3,
        outbox_bytes: int = DEFAULTS.client_outbox_bytes,
        slow_consumer_timeout: float = 10.0,
    ) -> Rig:
        stats = FanoutStats()
        socket = socket if socket is not None else FakeSocket()
        client = ClientConnection(
            socket,
            stats,
            direct=writer,
            limits=OutboxLimits(outbox_size, outbox_bytes, slow_consumer_timeout),
            encoder=WS,
        )
        rig = Rig(client, socket, writer, stats)
        self.made.append(rig)
        return rig


@pytest.fixture
async def rigs() -> AsyncIterator[Rigs]:
    """Makes clients, and stops every one at the end (cancelling their writer tasks)."""
    made = Rigs()
    try:
        yield made
    finally:
        for rig in made.made:
            await rig.client.stop()


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(sockets, "CLOSE_GRACE_SECONDS", GRACE)  # the slow consumer's close
    return GRACE


# -- 1. the fast path ----------------------------------------------------------------------


async def test_fast_path_writes_the_wire_bytes_at_once_without_a_task(rigs: Rigs) -> None:
    writer = FakeWriter(ready=True)
    rig = rigs.make(writer=writer)
    tasks = asyncio.all_tasks()
    offered = [
        ("AAPL", update("AAPL", 1)),
        ("MSFT", update("MSFT", 1)),
        ("AAPL", update("AAPL", 2)),
    ]
    frames = [frame for _, frame in offered]
    for symbol, frame in offered:
        rig.client.offer_update(symbol, frame)
        assert writer.writes[-1] == frame.wire  # written by the call itself, no await
    rig.client.send(control(1))
    assert writer.writes == [*(frame.wire for frame in frames), control(1).wire]
    assert asyncio.all_tasks() == tasks
    assert rig.stats.conflated_updates == 0

    # The check above can see a task: one that has to wait gets a writer task.
    slow = rigs.make(writer=FakeWriter(ready=False))
    slow.client.offer_update("AAPL", update("AAPL", 1))
    assert len(asyncio.all_tasks() - tasks) == 1


# -- 2. conflation -------------------------------------------------------------------------


async def test_conflation_sends_the_fifo_then_the_newest_per_symbol(rigs: Rigs) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3)
    offered = [("AAPL", 1), ("AAPL", 2), ("MSFT", 1)]  # fills the outbox of 3
    offered += [("AAPL", 3), ("MSFT", 2), ("AAPL", 4), ("MSFT", 3), ("AAPL", 5)]
    for symbol, seq in offered:
        rig.client.offer_update(symbol, update(symbol, seq))
    assert writer.writes == []
    # Superseded while pending: AAPL 3 and 4, MSFT 2.
    assert rig.stats.conflated_updates == 3

    writer.set_ready(True)
    await wait_until(writer.changed, lambda: bool(writer.writes))
    # One write for the whole backlog; the FIFO in order, then the newest per symbol.
    assert len(writer.writes) == 1
    expected = [("AAPL", 1), ("AAPL", 2), ("MSFT", 1), ("AAPL", 5), ("MSFT", 3)]
    assert writer.writes[0] == b"".join(update(s, n).wire for s, n in expected)
    assert not rig.client.evicted

    # Caught up: the next update takes the fast path again.
    rig.client.offer_update("MSFT", update("MSFT", 4))
    assert writer.writes[-1] == update("MSFT", 4).wire


async def test_conflation_never_reorders_a_symbol_and_counts_what_it_drops(rigs: Rigs) -> None:
    rng = random.Random(7)
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3)
    last = {"AAPL": 0, "MSFT": 0}
    for _ in range(600):
        roll = rng.random()
        if roll < 0.6:
            symbol = rng.choice(["AAPL", "MSFT"])
            last[symbol] += 1
            rig.client.offer_update(symbol, update(symbol, last[symbol]))
        elif roll < 0.8:
            writer.fills_on_write = rng.random() < 0.5
            writer.set_ready(rng.random() < 0.5)
        else:
            await asyncio.sleep(0)  # let the writer task take one step
    writer.fills_on_write = False
    writer.set_ready(True)
    await wait_until(
        writer.changed,
        lambda: {s: n for s, n in updates_seen(writer.payloads())} == last,
    )
    seen = updates_seen(writer.payloads())
    for symbol in last:
        sequence = [n for s, n in seen if s == symbol]
        assert sequence == sorted(set(sequence)), f"{symbol} reordered or repeated"
        assert sequence[-1] == last[symbol]
    # Every update was either sent or superseded, and only superseded ones are counted.
    assert rig.stats.conflated_updates == sum(last.values()) - len(seen) > 0
    assert not rig.client.evicted


async def test_forget_pending_drops_a_conflated_update_of_a_symbol_left(rigs: Rigs) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=1)
    rig.client.offer_update("AAPL", update("AAPL", 1))  # the outbox
    rig.client.offer_update("AAPL", update("AAPL", 2))  # conflated
    rig.client.offer_update("MSFT", update("MSFT", 1))  # conflated
    rig.client.forget_pending("MSFT")
    rig.client.forget_pending("GOOG")  # nothing pending: no effect
    writer.set_ready(True)
    await wait_until(writer.changed, lambda: bool(writer.writes))
    assert updates_seen(writer.payloads()) == [("AAPL", 1), ("AAPL", 2)]


# -- 3. control frames ---------------------------------------------------------------------


async def test_control_frames_queue_in_order_behind_updates(rigs: Rigs) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3)
    rig.client.offer_update("AAPL", update("AAPL", 1))
    rig.client.send(control(1))
    rig.client.offer_update("AAPL", update("AAPL", 2))
    rig.client.send(control(2))  # the FIFO is over the outbox size: control frames still go in
    rig.client.offer_update("AAPL", update("AAPL", 3))  # conflated
    rig.client.send(control(3))  # FIFO, so ahead of the conflated update
    writer.set_ready(True)
    await wait_until(writer.changed, lambda: bool(writer.writes))
    expected = [update("AAPL", 1), control(1), update("AAPL", 2), control(2), control(3)]
    expected.append(update("AAPL", 3))
    assert writer.writes == [b"".join(frame.wire for frame in expected)]
    assert rig.stats.conflated_updates == 0
    assert not rig.client.evicted


async def test_past_twice_the_outbox_of_control_frames_the_client_is_evicted(
    rigs: Rigs, short_grace: float
) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3)
    for n in range(6):  # twice the outbox size: still queued
        rig.client.send(control(n))
    assert not rig.client.evicted
    assert rig.stats.slow_consumer_disconnects == 0
    rig.client.send(control(6))
    assert rig.client.evicted
    assert rig.stats.slow_consumer_disconnects == 1
    await wait_for(rig.socket.aborted)
    assert rig.socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]
    writer.set_ready(True)
    await asyncio.sleep(0)  # let a (wrong) writer take one step
    assert writer.writes == []  # what was queued is dropped, not sent after the close


async def test_the_outbox_is_bounded_in_bytes_as_well_as_in_frames(
    rigs: Rigs, short_grace: float
) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=10_000, outbox_bytes=4096)
    for seq in range(200):  # ~17 KB of updates for 10 symbols, far fewer than 10,000 frames
        rig.client.offer_update(f"S{seq % 10}", update(f"S{seq % 10}", seq))
    assert rig.stats.conflated_updates > 0  # past 4096 bytes: newest per symbol
    # The FIFO up to its bound (one frame past it at most), then one update per symbol.
    assert rig.client.outbox_bytes <= 4096 + 11 * len(update("S0", 199).payload)
    # Frames that cannot be conflated (a history, a batch, a reply) evict past twice it.
    big = protocol.error_message("rate_limited", "x" * 1900)
    other = rigs.make(writer=FakeWriter(ready=False), outbox_size=10_000, outbox_bytes=4096)
    for _ in range(4):
        other.client.send(big)
    assert not other.client.evicted and other.client.outbox_bytes == 4 * len(big.payload)
    other.client.send(big)
    assert other.client.evicted and other.client.outbox_bytes == 0
    await wait_for(other.socket.aborted)


async def test_a_backlog_is_written_a_chunk_at_a_time(rigs: Rigs) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=10_000)
    frames = [protocol.error_message("rate_limited", f"{n:05d}" + "y" * 500) for n in range(2000)]
    for frame in frames:  # ~1 MB behind one that does not read
        rig.client.send(frame)
    writer.set_ready(True)
    await wait_until(writer.changed, lambda: len(writer.payloads()) == len(frames))
    assert writer.payloads() == [frame.payload for frame in frames]  # all, in order
    # A chunk at a time (16 KiB), never the whole megabyte: the server would hold it
    # all for the client, over what a client may leave unread (MAX_UNREAD_OUTPUT).
    assert max(map(len, writer.writes)) < 2**15


async def test_a_corked_message_goes_out_a_chunk_at_a_time(rigs: Rigs) -> None:
    writer = FakeWriter(ready=True)
    rig = rigs.make(writer=writer, outbox_size=10_000)
    assert rig.client.cork()
    offered = [update("AAPL", seq) for seq in range(1000)]  # one huge upstream message
    for frame in offered:
        rig.client.offer_update("AAPL", frame)
    rig.client.uncork()
    await wait_until(writer.changed, lambda: len(writer.payloads()) == len(offered))
    assert writer.payloads() == [frame.payload for frame in offered]
    assert max(map(len, writer.writes)) < 2**15


# -- 4. eviction ---------------------------------------------------------------------------


async def test_eviction_before_the_writer_task_ran_still_closes_once(
    rigs: Rigs, short_grace: float
) -> None:
    rig = rigs.make(writer=FakeWriter(ready=False), outbox_size=3)
    for n in range(7):  # the writer task exists but has not taken a step
        rig.client.send(control(n))
    assert rig.client.evicted
    for n in range(7, 20):  # past twice the outbox again: evicted a second time, no effect
        rig.client.send(control(n))
    rig.client.offer_update("AAPL", update("AAPL", 1))
    assert rig.stats.slow_consumer_disconnects == 1
    await wait_for(rig.socket.aborted)
    # The client was reading: the close went out and completed, then the socket was
    # dropped at the end of the grace period.
    assert rig.socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]
    assert rig.socket.events == ["close", "closed", "abort"]
    assert rig.stats.slow_consumer_disconnects == 1


async def test_eviction_of_a_writer_waiting_for_the_socket_closes_once(
    rigs: Rigs, short_grace: float
) -> None:
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3, slow_consumer_timeout=GRACE)
    rig.client.offer_update("AAPL", update("AAPL", 1))
    await wait_for(writer.waiting)  # the writer task is blocked in wait_ready()
    for n in range(20):  # evicts at the 7th, and would again at the 14th
        rig.client.send(control(n))
    assert rig.client.evicted
    await wait_for(rig.socket.aborted)
    assert rig.socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]
    assert rig.socket.events == ["close", "closed", "abort"]
    # The lag timer was stopped by the eviction and is not restarted after it.
    for seq in range(2, 10):
        rig.client.offer_update("AAPL", update("AAPL", seq))
    await asyncio.sleep(2 * GRACE)  # past the slow-consumer deadline: nothing fires
    assert rig.stats.slow_consumer_disconnects == 1
    assert rig.socket.aborts == 1
    assert writer.writes == []


async def test_eviction_of_a_writer_blocked_in_send_aborts_after_the_grace(
    rigs: Rigs, short_grace: float
) -> None:
    socket = FakeSocket(reading=False)  # sends, and the close, block
    rig = rigs.make(writer=None, socket=socket, outbox_size=3)
    rig.client.offer_update("AAPL", update("AAPL", 1))
    await wait_for(socket.send_started)  # the writer task is blocked in send()
    loop = asyncio.get_running_loop()
    for n in range(8):
        rig.client.send(control(n))
    assert rig.client.evicted
    evicted_at = loop.time()
    await wait_for(socket.aborted)
    # The close was attempted, never completed, and the socket was reset after the grace.
    assert socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]
    assert socket.events == ["close", "abort"]
    assert loop.time() - evicted_at >= GRACE * 0.9
    assert socket.texts == []
    assert rig.stats.slow_consumer_disconnects == 1


async def test_close_that_never_completes_is_aborted_when_evicted_before_the_writer_ran(
    rigs: Rigs, short_grace: float
) -> None:
    socket = FakeSocket(reading=False)
    rig = rigs.make(writer=FakeWriter(ready=False), socket=socket, outbox_size=1)
    for n in range(3):
        rig.client.send(control(n))
    assert rig.client.evicted
    await wait_for(socket.aborted)
    assert socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]
    assert socket.events == ["close", "abort"]
    assert rig.stats.slow_consumer_disconnects == 1


# -- 5. the slow-consumer timer ------------------------------------------------------------


async def test_a_client_that_stays_behind_is_evicted_after_the_timeout(
    rigs: Rigs, short_grace: float
) -> None:
    timeout = 0.05
    rig = rigs.make(writer=FakeWriter(ready=False), outbox_size=3, slow_consumer_timeout=timeout)
    loop = asyncio.get_running_loop()
    for seq in range(3):
        rig.client.offer_update("AAPL", update("AAPL", seq))
    started = loop.time()
    rig.client.offer_update("AAPL", update("AAPL", 3))  # the first conflated one: timer on
    assert not rig.client.evicted
    await wait_for(rig.socket.close_called)
    assert loop.time() - started >= timeout * 0.9
    assert rig.client.evicted
    assert rig.stats.slow_consumer_disconnects == 1
    assert rig.socket.closes == [(CLOSE_TRY_AGAIN_LATER, "slow consumer")]


async def test_a_client_that_drains_a_little_but_stays_behind_is_evicted(
    rigs: Rigs, short_grace: float
) -> None:
    writer = FakeWriter(ready=False, fills_on_write=True)
    # The socket shares the writer's event, so an eviction mid-wait (no write will
    # follow: the writer task is cancelled) is seen through the close.
    socket = FakeSocket(changed=writer.changed)
    rig = rigs.make(writer=writer, socket=socket, outbox_size=3, slow_consumer_timeout=0.05)
    seq = 0
    async with asyncio.timeout(WAIT):
        while not rig.client.evicted:
            for _ in range(5):
                seq += 1
                rig.client.offer_update("AAPL", update("AAPL", seq))
            writes = len(writer.writes)
            writer.set_ready(True)  # it reads a little; the backlog fills its buffer again

            def progressed(before: int = writes) -> bool:
                return len(writer.writes) > before or rig.client.evicted

            await wait_until(writer.changed, progressed)
    assert rig.stats.slow_consumer_disconnects == 1
    await wait_for(rig.socket.close_called)


async def test_a_client_that_catches_up_before_the_timeout_stays(rigs: Rigs) -> None:
    timeout = 0.05
    writer = FakeWriter(ready=False)
    rig = rigs.make(writer=writer, outbox_size=3, slow_consumer_timeout=timeout)
    for seq in range(5):
        rig.client.offer_update("AAPL", update("AAPL", seq))
    writer.set_ready(True)
    await wait_until(writer.changed, lambda: bool(writer.writes))
    await asyncio.sleep(3 * timeout)  # past the deadline: the timer must have been stopped
    assert not rig.client.evicted
    assert rig.stats.slow_consumer_disconnects == 0
    assert rig.socket.closes == []
    assert updates_seen(writer.payloads())[-1] == ("AAPL", 4)


async def test_an_asgi_client_that_catches_up_before_the_timeout_stays(rigs: Rigs) -> None:
    timeout = 0.05
    socket = FakeSocket(reading=False)
    rig = rigs.make(writer=None, socket=socket, outbox_size=3, slow_consumer_timeout=timeout)
    for seq in range(6):
        rig.client.offer_update("AAPL", update("AAPL", seq))
    socket.reading.set()
    await wait_until(socket.changed, lambda: socket.texts[-1:] == [update("AAPL", 5).text])
    await asyncio.sleep(3 * timeout)  # past the deadline: the timer must have been stopped
    assert not rig.client.evicted
    assert socket.closes == []


async def test_a_client_whose_buffer_drains_after_the_backlog_write_stays(rigs: Rigs) -> None:
    timeout = 0.05
    writer = FakeWriter(ready=False, fills_on_write=True)
    rig = rigs.make(writer=writer, outbox_size=3, slow_consumer_timeout=timeout)
    for seq in range(5):
        rig.client.offer_update("AAPL", update("AAPL", seq))  # the 4th starts the timer
    writer.set_ready(True)
    await wait_until(writer.changed, lambda: bool(writer.writes))
    # The whole backlog went out in one write, which filled the send buffer; the client
    # then reads all of it well before the deadline. Nothing is pending any more.
    assert updates_seen(writer.payloads())[-1] == ("AAPL", 4)
    writer.set_ready(True)
    await asyncio.sleep(3 * timeout)  # past the deadline: caught up, nothing should fire
    assert not rig.client.evicted


# -- 6. the ASGI path ----------------------------------------------------------------------


async def test_asgi_path_sends_text_frames_in_order(rigs: Rigs) -> None:
    socket = FakeSocket()
    rig = rigs.make(writer=None, socket=socket, outbox_size=8)
    frames = [protocol.connection_message(rig.client.id), protocol.status_message("connected")]
    for frame in frames:
        rig.client.send(frame)
    for seq in range(3):
        for symbol in ("AAPL", "MSFT"):
            frame = update(symbol, seq)
            frames.append(frame)
            rig.client.offer_update(symbol, frame)
    frames.append(protocol.PONG)
    rig.client.send(protocol.PONG)
    await wait_until(socket.changed, lambda: len(socket.texts) >= len(frames))
    assert socket.texts == [frame.payload.decode() for frame in frames]
    assert [orjson.loads(text) for text in socket.texts][-1] == {"type": "pong"}
    assert orjson.loads(socket.texts[2]) == {
        "type": "price_update",
        "symbol": "AAPL",
        "data": {"price": 100.0, "volume": 1.0, "timestamp": 0},
        "feed": "live",
    }


async def test_asgi_path_conflates_while_a_send_is_blocked(rigs: Rigs) -> None:
    socket = FakeSocket(reading=False)
    rig = rigs.make(writer=None, socket=socket, outbox_size=3)
    rig.client.offer_update("AAPL", update("AAPL", 1))
    await wait_for(socket.send_started)  # AAPL 1 is being sent
    offered = [("AAPL", 2), ("AAPL", 3), ("MSFT", 1)]  # the outbox
    offered += [("AAPL", 4), ("MSFT", 2), ("AAPL", 5), ("MSFT", 3)]
    for symbol, seq in offered:
        rig.client.offer_update(symbol, update(symbol, seq))
    socket.reading.set()
    expected = [("AAPL", 1), ("AAPL", 2), ("AAPL", 3), ("MSFT", 1), ("AAPL", 5), ("MSFT", 3)]
    await wait_until(socket.changed, lambda: len(socket.texts) >= len(expected))
    assert socket.texts == [update(s, n).text for s, n in expected]
    assert rig.stats.conflated_updates == 2


# -- 7. hub reference counts ---------------------------------------------------------------


async def test_hub_reference_counts_follow_any_interleaving() -> None:
    rng = random.Random(1234)
    symbols = [f"S{n}" for n in range(8)]
    hub = make_hub()
    stacks: dict[ClientConnection, AsyncExitStack] = {}
    model: dict[ClientConnection, set[str]] = {}

    def check() -> None:
        assert_hub_consistent(hub)
        union = set().union(*model.values()) if model else set()
        assert hub.interest.symbols == union
        assert hub.symbols() == sorted(union)
        assert hub.client_count == len(model)
        for client, held in model.items():
            assert client.symbols == held
        for symbol in symbols:
            assert hub.subscribers_of(symbol) == {c for c, held in model.items() if symbol in held}

    try:
        for _ in range(500):
            roll = rng.random()
            if not model or (roll < 0.15 and len(model) < 10):
                stack = AsyncExitStack()
                client = await stack.enter_async_context(
                    hub.connect(FakeSocket(), FakeWriter(), encoder=WS)
                )
                stacks[client] = stack
                model[client] = set()
            elif roll < 0.25:
                client = rng.choice(list(model))
                del model[client]
                await stacks.pop(client).aclose()
            elif roll < 0.65:
                client = rng.choice(list(model))
                wanted = rng.sample(symbols, rng.randint(1, 4))
                hub.subscribe(client, wanted)
                model[client].update(wanted)
            elif roll < 0.95:
                client = rng.choice(list(model))
                dropped = rng.sample(symbols, rng.randint(1, 4))
                hub.unsubscribe(client, dropped)
                model[client].difference_update(dropped)
            else:
                symbol = rng.choice(symbols)
                refuse_upstream(hub, symbol)
                for held in model.values():
                    held.discard(symbol)
            check()
    finally:
        for stack in stacks.values():
            await stack.aclose()
    model.clear()
    check()
    assert hub.interest.symbols == frozenset()


# -- 8. limits -----------------------------------------------------------------------------


async def test_symbol_limits_are_refused_by_name_then_what_is_held_is_confirmed() -> None:
    hub = make_hub(max_symbols_per_client=2)
    async with (
        hub.connect(FakeSocket(), w1 := FakeWriter(), encoder=WS) as c1,
        hub.connect(FakeSocket(), w2 := FakeWriter(), encoder=WS) as c2,
    ):
        start = len(w1.messages())
        hub.subscribe(c1, ["AAPL", "MSFT", "GOOG"])
        error, confirmation = w1.messages()[start:]
        assert error["type"] == "error"
        assert error["code"] == "too_many_symbols"
        assert error["symbols"] == ["GOOG"]
        assert "GOOG" in error["message"]
        assert confirmation == {
            "type": "subscription",
            "status": "subscribed",
            "symbols": ["AAPL", "MSFT"],
        }

        hub.subscribe(c2, ["TSLA"])  # the third distinct symbol upstream
        start = len(w2.messages())
        # Capacity is no reason to refuse (it was `symbol_limit` past MAX_UPSTREAM_SYMBOLS):
        # a fourth distinct symbol is served; only the client's own cap refuses.
        hub.subscribe(c2, ["NVDA", "AAPL", "AMZN"])
        too_many, confirmation = w2.messages()[start:]
        assert too_many["code"] == "too_many_symbols"
        assert too_many["symbols"] == ["AAPL", "AMZN"]
        assert "AMZN" in too_many["message"]
        assert confirmation == {"type": "subscription", "status": "subscribed", "symbols": ["NVDA"]}
        assert hub.interest.symbols == {"AAPL", "MSFT", "TSLA", "NVDA"}
        assert c2.symbols == {"TSLA", "NVDA"}
        assert_hub_consistent(hub)

        # A symbol already held is confirmed again, after the refusal of the others.
        start = len(w1.messages())
        hub.subscribe(c1, ["AAPL", "GOOG"])
        error, confirmation = w1.messages()[start:]
        assert error["code"] == "too_many_symbols"
        assert error["symbols"] == ["GOOG"]
        assert confirmation == {"type": "subscription", "status": "subscribed", "symbols": ["AAPL"]}

        # Nothing held of the request: the refusal, and no confirmation.
        start = len(w1.messages())
        hub.subscribe(c1, ["NVDA"])
        (only,) = w1.messages()[start:]
        assert only["code"] == "too_many_symbols"
        assert only["symbols"] == ["NVDA"]


# -- 9. snapshots --------------------------------------------------------------------------


async def test_a_later_subscriber_gets_the_last_update_at_once() -> None:
    hub = make_hub()
    broadcaster = asyncio.create_task(hub.broadcast_forever())
    try:
        async with hub.connect(FakeSocket(), w1 := FakeWriter(), encoder=WS) as c1:
            hub.subscribe(c1, ["AAPL"])
            batch = [update("AAPL", 1), update("AAPL", 2)]
            await hub.publish(UpdateBatch(batch, time.perf_counter()))
            await wait_until(w1.changed, lambda: ("AAPL", 2) in updates_seen(w1.payloads()))
            assert updates_seen(w1.payloads()) == [("AAPL", 1), ("AAPL", 2)]
            assert hub.stats.price_updates_sent == 2

            async with hub.connect(FakeSocket(), w2 := FakeWriter(), encoder=WS) as c2:
                start = len(w2.payloads())
                hub.subscribe(c2, ["AAPL"])  # no await: the snapshot is written at once
                confirmation, snapshot = w2.payloads()[start:]
                assert orjson.loads(confirmation)["type"] == "subscription"
                assert snapshot == update("AAPL", 2).payload
                hub.subscribe(c2, ["AAPL"])  # already held: no second snapshot
                assert updates_seen(w2.payloads()) == [("AAPL", 2)]
    finally:
        broadcaster.cancel()
        await asyncio.wait([broadcaster])


async def test_a_non_live_batch_only_fills_in_and_never_replaces_a_live_snapshot() -> None:
    hub = make_hub()

    async def snapshot_for(symbol: str) -> list[tuple[str, int]]:
        async with hub.connect(FakeSocket(), writer := FakeWriter(), encoder=WS) as client:
            hub.subscribe(client, [symbol])
            return updates_seen(writer.payloads())

    async with hub.connect(FakeSocket(), w1 := FakeWriter(), encoder=WS) as c1:
        hub.subscribe(c1, ["AAPL", "MSFT"])
        await hub.broadcast(UpdateBatch([update("AAPL", 5)], time.perf_counter()))
        stale = [update("AAPL", 1), update("MSFT", 1)]
        await hub.broadcast(UpdateBatch(stale, time.perf_counter(), live=False))
        # MSFT had no snapshot: filled in (and passed on); AAPL had a live one: untouched.
        assert updates_seen(w1.payloads()) == [("AAPL", 5), ("MSFT", 1)]
        assert await snapshot_for("AAPL") == [("AAPL", 5)]
        assert await snapshot_for("MSFT") == [("MSFT", 1)]

        await hub.broadcast(UpdateBatch([update("MSFT", 7)], time.perf_counter()))
        assert await snapshot_for("MSFT") == [("MSFT", 7)]  # live replaces the fill-in
        await hub.broadcast(UpdateBatch([update("MSFT", 2)], 0.0, live=False))
        assert await snapshot_for("MSFT") == [("MSFT", 7)]
        assert updates_seen(w1.payloads()) == [("AAPL", 5), ("MSFT", 1), ("MSFT", 7)]

        # Nobody holds GOOG: neither kind of update is kept for it.
        await hub.broadcast(UpdateBatch([update("GOOG", 1)], 0.0, live=False))
        await hub.broadcast(UpdateBatch([update("GOOG", 2)], 0.0))
        assert await snapshot_for("GOOG") == []


async def test_a_symbol_nobody_holds_forgets_its_snapshot() -> None:
    hub = make_hub()

    async def snapshot_for(symbol: str) -> list[tuple[str, int]]:
        async with hub.connect(FakeSocket(), writer := FakeWriter(), encoder=WS) as client:
            hub.subscribe(client, [symbol])
            return updates_seen(writer.payloads())

    async with hub.connect(FakeSocket(), FakeWriter(), encoder=WS) as c1:
        hub.subscribe(c1, ["AAPL", "MSFT"])
        async with hub.connect(FakeSocket(), FakeWriter(), encoder=WS) as c2:
            hub.subscribe(c2, ["AAPL"])
            frames = [update("AAPL", 1), update("MSFT", 1)]
            await hub.broadcast(UpdateBatch(frames, time.perf_counter()))
            hub.unsubscribe(c1, ["AAPL"])
            assert await snapshot_for("AAPL") == [("AAPL", 1)]  # c2 still holds it
        # c2 left, the last holder of AAPL: the snapshot goes with it.
        assert await snapshot_for("AAPL") == []
        assert await snapshot_for("MSFT") == [("MSFT", 1)]
        hub.unsubscribe(c1, ["MSFT"])
        assert await snapshot_for("MSFT") == []
    assert_hub_consistent(hub)
    assert hub.interest.symbols == frozenset()


# -- 10. trades ----------------------------------------------------------------------------


async def test_trades_are_encoded_as_seed_price_updates_and_unheld_symbols_skipped() -> None:
    observer = CountingObserver()
    hub = make_hub(handoff_observer=observer)
    broadcaster = asyncio.create_task(hub.broadcast_forever())
    try:
        async with hub.connect(FakeSocket(), writer := FakeWriter(), encoder=WS) as client:
            hub.subscribe(client, ["AAPL"])
            # Only symbols nobody holds: nothing is published at all.
            relay = local_relay(hub)
            await relay.trades_received([Trade("MSFT", 1.0, 1.0, 1)], time.perf_counter())
            trades = [
                Trade("AAPL", 189.5, 100.0, 1_700_000_000_000),
                Trade("MSFT", 2.0, 1.0, 2),
                Trade("AAPL", 189.25, 0.5, 1_700_000_000_001),
            ]
            await relay.trades_received(trades, time.perf_counter() - 1.0)
            await wait_until(writer.changed, lambda: len(updates_seen(writer.payloads())) == 2)
            prices = [m for m in writer.messages() if m["type"] == "price_update"]
            assert prices == [
                {
                    "type": "price_update",
                    "symbol": "AAPL",
                    "data": {"price": 189.5, "volume": 100.0, "timestamp": 1_700_000_000_000},
                    "feed": "live",
                },
                {
                    "type": "price_update",
                    "symbol": "AAPL",
                    "data": {"price": 189.25, "volume": 0.5, "timestamp": 1_700_000_000_001},
                    "feed": "live",
                },
            ]
            # One batch reached the broadcaster: the MSFT-only one was never published.
            assert len(observer.observations) == 1
            assert observer.observations[0] >= 1.0
            assert hub.stats.price_updates_sent == 2
            assert "MSFT" not in hub.interest
    finally:
        broadcaster.cancel()
        await asyncio.wait([broadcaster])
