"""Supervision of the gateway's core tasks (the feed, the broadcaster, the delivery clock,
the quote fetcher, the market watch, the bars, the cluster).

A `Supervisor` is an async context manager that owns its tasks: `start()` runs a part,
an unexpected crash is logged with its traceback and the part is restarted after a
jittered, doubling delay, and leaving the block cancels and awaits every part. While a
part waits to be restarted it is listed in `down`, which `/health` turns into HTTP 503
so a load balancer or orchestrator takes the process out of rotation. A part that
crash-loops (CRASH_LOOP_AFTER crashes in a row, none after a run of `healthy_after`
seconds) stays in `down` while it runs between crashes, until it has run that long:
restarted every few seconds it serves almost nothing, and `/health` must say so. Parts
that restart pieces of themselves (the cluster's duties) report theirs through
`watched`, with a `Restarts` each.

A part must be safe to run again after a crash (each builds its own connections on
entry and releases them on exit). This module never inspects what a part does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from stock_gateway.runtime.backoff import Backoff
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

CRASH_LOOP_AFTER = 3  # crashes in a row that make a running part count as down


class Restarts:
    """One part's crashes in a row: the delay before its next run (`backoff`, by crashes
    in a row), and whether it is crash-looping. A run of `healthy_after` seconds ends
    the row."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        healthy_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff
        self.healthy_after = healthy_after
        self.in_a_row = 0
        self.reason = ""  # what ended the last run: an exception's type, never its text
        self._clock = clock
        self._running_since: float | None = None

    def started(self) -> None:
        self._running_since = self._clock()

    def crashed(self, reason: str) -> None:
        if self._healthy():
            self.in_a_row = 0
        self.in_a_row += 1
        self.reason = reason
        self._running_since = None

    def delay(self) -> float:
        """Before the next run: longer with every crash in a row."""
        return self._backoff.delay_after(self.in_a_row)

    @property
    def looping(self) -> bool:
        return self.in_a_row >= CRASH_LOOP_AFTER and not self._healthy()

    def _healthy(self) -> bool:
        since = self._running_since
        return since is not None and self._clock() - since >= self.healthy_after


class Supervisor:
    def __init__(
        self,
        *,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        healthy_after: float = 30.0,
        watched: Iterable[Callable[[], dict[str, str]]] = (),
    ) -> None:
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        # A part that ran this long before crashing starts its backoff over.
        self.healthy_after = healthy_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}
        self._restarts: dict[str, Restarts] = {}
        # Parts that restart pieces of themselves: what they name (part -> what ended
        # it) counts as down too, while those pieces crash-loop.
        self._watched = list(watched)
        self.restarts: dict[str, int] = {}

    @property
    def down(self) -> dict[str, str]:
        """Parts waiting to be restarted or crash-looping, with what ended them."""
        down = {name: r.reason for name, r in self._restarts.items() if r.looping}
        down.update(self._down)
        for parts in self._watched:
            down.update(parts())
        return down

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` as the part `name` until the supervisor exits, restarting it
        whenever it crashes or returns."""
        if name in self._tasks:
            raise ValueError(f"part {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep_running(name, work), name=name)

    async def _keep_running(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(self.initial_delay, self.max_delay, floor=0.5)
        restarts = self._restarts[name] = Restarts(backoff, healthy_after=self.healthy_after)
        while True:
            restarts.started()
            try:
                await work()
                reason = "returned"
                logger.error("core task ended unexpectedly part=%s; restarting it", name)
            except Exception as exc:
                reason = f"{type(exc).__name__}"
                logger.exception("core task crashed part=%s; restarting it", name)
            restarts.crashed(reason)
            self._down[name] = reason
            try:
                await asyncio.sleep(restarts.delay())
            finally:
                self._down.pop(name, None)
            self.restarts[name] += 1
            logger.warning(
                "core task restarting part=%s restarts=%d in_a_row=%d",
                name,
                self.restarts[name],
                restarts.in_a_row,
            )

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
