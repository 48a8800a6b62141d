"""What /health and /metrics count of the fan-out: `FanoutStats`, the hub's running
totals, clients included, kept as clients come and go so that reading them costs the
same however many are connected (a /health that looked at every client let one
address hammering it take the whole CPU); and `send_queue_bytes`, the one look at
every connected client, which only /metrics takes (paced per address); `Observer`,
where the hub's hand-off timings go. Counts only; no I/O but that look's one ioctl per
client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class Observer(Protocol):
    """Where timings go (a prometheus_client Histogram, in the app)."""

    def observe(self, amount: float) -> None: ...


class CountedClient(Protocol):
    """A client as the counts see it (delivery/outbox.py's ClientConnection)."""

    @property
    def dialect(self) -> str: ...

    @property
    def fast_path(self) -> bool: ...

    def queued_bytes(self) -> int: ...


def send_queue_bytes(clients: Iterable[CountedClient]) -> int:
    """Output queued below the app for all `clients`: what stalled clients pin."""
    return sum(client.queued_bytes() for client in clients)


@dataclass
class FanoutStats:
    price_updates_sent: int = 0
    conflated_updates: int = 0
    slow_consumer_disconnects: int = 0
    clients_fast_path: int = 0  # written straight to their socket
    clients_by_dialect: dict[str, int] = field(default_factory=dict)  # none at zero

    def joined(self, client: CountedClient) -> None:
        self.clients_fast_path += client.fast_path
        self.clients_by_dialect[client.dialect] = self.clients_by_dialect.get(client.dialect, 0) + 1

    def left(self, client: CountedClient) -> None:
        self.clients_fast_path -= client.fast_path
        left = self.clients_by_dialect[client.dialect] - 1
        if left:
            self.clients_by_dialect[client.dialect] = left
        else:
            del self.clients_by_dialect[client.dialect]
