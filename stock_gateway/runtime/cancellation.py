"""One rule for every retry loop: never outlive our own cancellation.

Client libraries (redis-py, sometimes aiohttp) can surface a cancellation of the task
that is using them as a connection error or a timeout while they tear a connection
down, or swallow it whole. A loop that retries on such errors would then run on after
it was told to stop, and shutdown or failover would hang. This module only checks the
current task; it must never cancel or create anything.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling(cause: BaseException | None = None) -> None:
    """Raise CancelledError if the current task has been asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause
