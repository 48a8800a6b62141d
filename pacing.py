"""Delivery the client chooses: throttled and batched streams, on one clock for all.

A client that sets `throttle_ms` gets at most one update per symbol per that many
milliseconds, always the newest (conflated, never reordered); one that sets `batch_ms`
gets its updates grouped into one `price_updates` frame at most that often, in arrival
order (with a throttle too, the newest per symbol). A `Pacing` holds one client's
pending updates as references to frames encoded once for everybody; a batch is the
pre-encoded items joined, so the gateway's cost follows the frames it writes, not the
trades it receives.

`DeliveryClock` is the one timer: a wheel of `TICK_SECONDS` slots, driven by one
supervised coroutine, that flushes each pacing when it is due. An update is never held
longer than its throttle or batch interval plus one tick.

This module never talks to sockets: a pacing hands whole frames to its `emit`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import orjson

from protocol import DeliveryOptions, Frame, price_updates_message

TICK_SECONDS = 0.01


class DeliveryClock:
    """One timer for every paced client: flushes each when it is due."""

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._slots: dict[int, set[Pacing]] = {}
        self._woken = asyncio.Event()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def at(self, when: float, pacing: Pacing) -> None:
        slot = math.ceil(when / self.tick)
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
            first = min(self._slots)
            wait = first * self.tick - self.now()
            if wait > 0:
                self._woken.clear()
                try:  # wake early if something is scheduled sooner
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
    """One client's pending updates under its options; `emit` takes the frames to send
    (several at once are written together)."""

    def __init__(
        self,
        options: DeliveryOptions,
        clock: DeliveryClock,
        emit: Callable[[list[Frame]], None],
        on_conflated: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        self._throttle = options.throttle_ms / 1000
        self._batch = options.batch_ms / 1000
        self._clock = clock
        self._emit = emit
        self._on_conflated = on_conflated
        self._pending: dict[str, Frame] = {}  # newest per symbol (throttled), arrival order
        self._items: list[Frame] = []  # batch without throttle: every update, in order
        self._last_sent: dict[str, float] = {}
        self._last_flush = -math.inf
        self._slot: int | None = None

    def offer(self, symbol: str, frame: Frame) -> None:
        now = self._clock.now()
        if not self._throttle:
            self._items.append(frame)
            self._schedule(max(now, self._last_flush + self._batch), now)
            return
        if symbol in self._pending:
            del self._pending[symbol]  # the newer one takes its place, at the end
            self._on_conflated()
        self._pending[symbol] = frame
        due = self._last_sent.get(symbol, -math.inf) + self._throttle
        if self._batch:
            due = max(due, self._last_flush + self._batch)
        self._schedule(max(now, due), now)

    def sent_now(self, symbol: str) -> None:
        """A frame for `symbol` went out another way (a snapshot): it counts as sent."""
        self._last_sent[symbol] = self._clock.now()
        if self._pending.pop(symbol, None) is not None:
            self._on_conflated()

    def forget(self, symbol: str) -> None:
        self._pending.pop(symbol, None)
        self._items = [frame for frame in self._items if not _is_for(frame, symbol)]
        self._last_sent.pop(symbol, None)

    def close(self) -> None:
        """The client is gone: nothing more goes out, the clock forgets it."""
        if self._slot is not None:
            self._clock.cancel(self._slot, self)
            self._slot = None
        self._pending.clear()
        self._items = []

    def drain(self) -> None:
        """Send everything pending now (the options are changing)."""
        if self._slot is not None:
            self._clock.cancel(self._slot, self)
            self._slot = None
        frames = list(self._pending.values())
        self._pending.clear()
        if self._items:
            frames = self._items
            self._items = []
        self._send(frames)

    def flush(self, now: float) -> None:
        """What is due now goes out: one batch frame, or the throttled updates."""
        self._slot = None
        if not self._throttle:
            frames, self._items = self._items, []
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
            self._send(frames)

    def _window_open(self, symbol: str, now: float) -> bool:
        return self._last_sent.get(symbol, -math.inf) + self._throttle <= now + 1e-9

    def _send(self, frames: list[Frame]) -> None:
        if not frames:
            return
        if self._batch:
            self._emit([price_updates_message([frame.batch_item for frame in frames])])
        else:
            self._emit(frames)

    def _schedule(self, when: float, now: float) -> None:
        """Flush at `when`: now, inline, if it is due already; else on the clock."""
        if when <= now:
            self.flush(now)
            return
        slot = math.ceil(when / self._clock.tick)
        if self._slot is not None:
            if self._slot <= slot:
                return  # already due as soon
            self._clock.cancel(self._slot, self)
        self._slot = slot
        self._clock.at(when, self)


def _is_for(frame: Frame, symbol: str) -> bool:
    return frame.batch_item.startswith(b'{"symbol":' + orjson.dumps(symbol) + b",")
