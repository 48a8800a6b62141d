"""What /health and /metrics count of the fan-out: `FanoutStats` (the hub's running
totals) and `ClientCounts` (a look at the connected clients). Counts only; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class CountedClient(Protocol):
    """A client as the counts see it (delivery/outbox.py's ClientConnection)."""

    dialect: str

    @property
    def fast_path(self) -> bool: ...

    def queued_bytes(self) -> int: ...


@dataclass(frozen=True)
class ClientCounts:
    """What /health and /metrics show of the connected clients."""

    fast_path: int  # written straight to their socket
    by_dialect: dict[str, int]
    send_queue_bytes: int  # output queued below the app: what stalled clients pin

    @classmethod
    def of(cls, clients: Iterable[CountedClient]) -> ClientCounts:
        fast_path = queued = 0
        by_dialect: dict[str, int] = {}
        for client in clients:
            fast_path += client.fast_path
            queued += client.queued_bytes()
            by_dialect[client.dialect] = by_dialect.get(client.dialect, 0) + 1
        return cls(fast_path, by_dialect, queued)


@dataclass
class FanoutStats:
    price_updates_sent: int = 0
    conflated_updates: int = 0
    slow_consumer_disconnects: int = 0
