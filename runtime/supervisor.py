"""Supervision of the gateway's core tasks (the feed, the broadcaster, the delivery clock,
the quote fetcher, the market watch, the bars, the cluster).

A `Supervisor` is an async context manager that owns its tasks: `start()` runs a part,
an unexpected crash is logged with its traceback and the part is restarted after a
jittered, doubling delay, and leaving the block cancels and awaits every part. While a
part waits to be restarted it is listed in `down`, which `/health` turns into HTTP 503
so a load balancer or orchestrator takes the process out of rotation.

A part must be safe to run again after a crash (each builds its own connections on
entry and releases them on exit). This module never inspects what a part does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from types import TracebackType

from runtime.logs import get_logger

logger = get_logger(__name__)


class Supervisor:
    def __init__(
        self, *, initial_delay: float = 0.5, max_delay: float = 30.0, healthy_after: float = 30.0
    ) -> None:
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        # A part that ran this long before crashing starts its backoff over.
        self.healthy_after = healthy_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}
        self.restarts: dict[str, int] = {}

    @property
    def down(self) -> dict[str, str]:
        """Parts waiting to be restarted, with what ended them."""
        return dict(self._down)

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` as the part `name` until the supervisor exits, restarting it
        whenever it crashes or returns."""
        if name in self._tasks:
            raise ValueError(f"part {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep_running(name, work), name=name)

    async def _keep_running(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = self.initial_delay
        while True:
            started = loop.time()
            try:
                await work()
                reason = "returned"
                logger.error("core task ended unexpectedly part=%s; restarting it", name)
            except Exception as exc:
                reason = f"{type(exc).__name__}"
                logger.exception("core task crashed part=%s; restarting it", name)
            if loop.time() - started >= self.healthy_after:
                delay = self.initial_delay
            self._down[name] = reason
            try:
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
            finally:
                self._down.pop(name, None)
            delay = min(delay * 2, self.max_delay)
            self.restarts[name] += 1
            logger.warning("core task restarting part=%s restarts=%d", name, self.restarts[name])

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
