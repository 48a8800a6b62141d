"""Delivery the client chooses: throttled and batched streams, their work shared.

A client that sets `throttle_ms` gets at most one update per symbol per that many
milliseconds, always the newest (conflated, never reordered); one that sets `batch_ms`
gets its updates grouped into one `price_updates` frame at most that often, in arrival
order (with a throttle too, the newest per symbol). A batch of every update (no
throttle) is sent early once it holds `max_batch_bytes` (the MAX_BATCH_BYTES setting): a long
`batch_ms` on a busy stream must not hold minutes of updates, nor make frames of
megabytes; the client still gets every update, in order.

Clients with the same options and the same symbols receive exactly the same stream,
so they form one `DeliveryGroup`: the broadcaster offers each update once per group,
not once per client, the group's `Pacing` decides what is due, a batch is encoded once
(the updates' pre-encoded bytes joined) and the same bytes are written to every member.
The gateway's cost follows the frames it writes, not the trades it receives.
`DeliveryClock` is the one timer: a wheel of `PACING_TICK_SECONDS` slots, driven by one
supervised coroutine; nothing is held longer than its interval plus one tick.

A member that changes its symbols or options moves to another group, taking with it
at once what its old group still held for the symbols it keeps, less what its new
group holds already and will send it anyway: it loses nothing and, as far as one
stream shared by many allows, gets nothing twice (its next update may come sooner than
its throttle, once). It takes them as the single `price_update` frames they are, the
very objects every other member shares, never re-encoded into a batch of its own: a
client that moves again and again costs no memory of its own, however long its
`batch_ms`. This module never touches sockets: a group hands whole frames to its
members' `emit`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from stock_gateway.protocol import DeliveryOptions, Frame, price_updates_message

PACING_TICK_SECONDS = 0.01
# What a pacing hands on: single price updates (each naming its symbol), or one batch.
Outgoing = list[Frame]


class DeliveryClock:
    """One timer for every paced group: flushes each when it is due."""

    def __init__(self, tick: float = PACING_TICK_SECONDS) -> None:
        self.tick = tick
        self._slots: dict[int, set[Pacing]] = {}
        self._woken = asyncio.Event()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def at(self, slot: int, pacing: Pacing) -> None:
        self._slots.setdefault(slot, set()).add(pacing)
        self._woken.set()

    def cancel(self, slot: int, pacing: Pacing) -> None:
        members = self._slots.get(slot)
        if members is not None:
            members.discard(pacing)
            if not members:
                del self._slots[slot]

    async def run(self) -> None:
        """Flush what is due, tick after tick; sleep while nothing is pending."""
        while True:
            if not self._slots:
                self._woken.clear()
                await self._woken.wait()
                continue
            wait = min(self._slots) * self.tick - self.now()
            if wait > 0:
                self._woken.clear()
                try:  # or earlier, if something is scheduled sooner meanwhile
                    async with asyncio.timeout(wait):
                        await self._woken.wait()
                except TimeoutError:
                    pass
                continue
            now = self.now()
            for slot in [slot for slot in self._slots if slot * self.tick <= now]:
                for pacing in self._slots.pop(slot):
                    pacing.flush(now)


class Pacing:
    """The pending updates of one stream under its options; `emit` takes what is due."""

    def __init__(
        self,
        options: DeliveryOptions,
        clock: DeliveryClock,
        emit: Callable[[Outgoing], None],
        on_conflated: Callable[[], None],
        max_batch_bytes: int,
    ) -> None:
        self._throttle = options.throttle_ms / 1000
        self._batch = options.batch_ms / 1000
        self._max_batch_bytes = max_batch_bytes
        self._clock = clock
        self._emit = emit
        self._on_conflated = on_conflated
        self._pending: dict[str, Frame] = {}  # throttled: newest per symbol, arrival order
        self._items: list[Frame] = []  # batched without a throttle: every update, in order
        self._items_bytes = 0
        self._last_sent: dict[str, float] = {}
        self._last_flush = -math.inf
        self._slot: int | None = None

    def offer(self, symbol: str, frame: Frame) -> None:
        now = self._clock.now()
        if not self._throttle:
            self._items.append(frame)
            self._items_bytes += len(frame.payload)
            full = self._items_bytes >= self._max_batch_bytes
            self._schedule(now if full else max(now, self._last_flush + self._batch), now)
            return
        if symbol in self._pending:
            del self._pending[symbol]  # the newer one takes its place, at the end
            self._on_conflated()
        self._pending[symbol] = frame
        due = self._last_sent.get(symbol, -math.inf) + self._throttle
        if self._batch:
            due = max(due, self._last_flush + self._batch)
        self._schedule(max(now, due), now)

    def held_for(self, symbols: set[str], carried: Pacing | None) -> Outgoing:
        """The price updates this stream still holds of `symbols` that `carried` (the
        stream a member moves to) does not hold too, oldest first, as the single frames
        they are (they stay pending here for the others)."""
        held = self._pending.values() if self._throttle else self._items
        frames = [frame for frame in held if frame.symbol in symbols]
        if carried is not None and frames:
            # The same update is the same Frame in every group; a newest-per-symbol
            # stream's pending update is as new as ours, or newer.
            sent_anyway = {id(frame) for frame in carried._items}
            newer = carried._pending
            frames = [f for f in frames if id(f) not in sent_anyway and f.symbol not in newer]
        return frames

    def close(self) -> None:
        if self._slot is not None:
            self._clock.cancel(self._slot, self)
            self._slot = None
        self._pending.clear()
        self._items = []
        self._items_bytes = 0

    def flush(self, now: float) -> None:
        """What is due now goes out: one batch frame, or the throttled updates."""
        self._slot = None
        if not self._throttle:
            frames, self._items, self._items_bytes = self._items, [], 0
        else:
            ready = [symbol for symbol in self._pending if self._window_open(symbol, now)]
            frames = [self._pending.pop(symbol) for symbol in ready]
            for symbol in ready:
                self._last_sent[symbol] = now
            if self._pending:  # the rest are still inside their throttle window
                soonest = min(self._last_sent[symbol] for symbol in self._pending) + self._throttle
                self._schedule(max(soonest, now + self._batch), now)
        if frames:
            self._last_flush = now
            self._emit(self._encode(frames))

    def _window_open(self, symbol: str, now: float) -> bool:
        return self._last_sent.get(symbol, -math.inf) + self._throttle <= now + 1e-9

    def _encode(self, frames: list[Frame]) -> Outgoing:
        if not frames:
            return []
        if self._batch:
            return [price_updates_message([frame.batch_item for frame in frames])]
        return frames

    def _schedule(self, when: float, now: float) -> None:
        """Flush at `when`: now, inline, if it is due already; else on the clock."""
        if when <= now:
            if self._slot is not None:
                # A flush due on the clock but not yet run (the wheel wakes a little
                # late): left there, it would send a second frame right after this one.
                self._clock.cancel(self._slot, self)
            self.flush(now)
            return
        slot = math.ceil(when / self._clock.tick)
        if self._slot is not None:
            if self._slot <= slot:
                return  # already due as soon
            self._clock.cancel(self._slot, self)
        self._slot = slot
        self._clock.at(slot, self)


class Member(Protocol):
    """A client as a group sees it."""

    options: DeliveryOptions
    symbols: set[str]

    def emit(self, outgoing: Outgoing) -> None: ...


GroupKey = tuple[DeliveryOptions, frozenset[str]]


class DeliveryGroup:
    """Clients with the same options and symbols: one pacing, the same bytes for all."""

    def __init__(
        self,
        key: GroupKey,
        clock: DeliveryClock,
        on_conflated: Callable[[], None],
        max_batch_bytes: int,
    ) -> None:
        self.key = key
        self.members: set[Member] = set()
        self.pacing = Pacing(key[0], clock, self._emit, on_conflated, max_batch_bytes)

    def _emit(self, outgoing: Outgoing) -> None:
        for member in self.members:
            member.emit(outgoing)


class DeliveryGroups:
    """Every paced client's group, and which groups want each symbol."""

    def __init__(
        self,
        clock: DeliveryClock,
        on_conflated: Callable[[], None],
        max_batch_bytes: int,
    ) -> None:
        self._clock = clock
        self._on_conflated = on_conflated
        self._max_batch_bytes = max_batch_bytes
        self._groups: dict[GroupKey, DeliveryGroup] = {}
        self._by_symbol: dict[str, set[DeliveryGroup]] = {}
        self._group_of: dict[Member, DeliveryGroup] = {}  # each paced member's group

    def __len__(self) -> int:
        return len(self._groups)

    def of_symbol(self, symbol: str) -> set[DeliveryGroup]:
        return self._by_symbol.get(symbol, _NONE)

    def place(self, member: Member) -> None:
        """Put `member` in the group its options and symbols call for (none if it is not
        paced or holds nothing), carrying over what its old group held for it that the
        new one will not send it."""
        options = member.options
        key = (options, frozenset(member.symbols)) if options.paced and member.symbols else None
        old = self._group_of.get(member)
        if old is not None and old.key == key:
            return
        group = None if key is None else self._groups.get(key)
        if old is not None:
            held = old.pacing.held_for(member.symbols, group.pacing if group else None)
            if held:
                member.emit(held)  # early rather than lost
            self._leave(old, member)
            del self._group_of[member]
        if key is None:
            return
        if group is None:
            group = self._groups[key] = DeliveryGroup(
                key, self._clock, self._on_conflated, self._max_batch_bytes
            )
            for symbol in key[1]:
                self._by_symbol.setdefault(symbol, set()).add(group)
        group.members.add(member)
        self._group_of[member] = group

    def group_of(self, member: Member) -> DeliveryGroup | None:
        return self._group_of.get(member)

    def remove(self, member: Member) -> None:
        group = self._group_of.pop(member, None)
        if group is not None:
            self._leave(group, member)

    def _leave(self, group: DeliveryGroup, member: Member) -> None:
        group.members.discard(member)
        if group.members:
            return
        group.pacing.close()
        del self._groups[group.key]
        for symbol in group.key[1]:
            groups = self._by_symbol[symbol]
            groups.discard(group)
            if not groups:
                del self._by_symbol[symbol]


_NONE: set[DeliveryGroup] = set()
