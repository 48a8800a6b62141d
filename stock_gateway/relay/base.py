"""The `Relay` interface: what the rest of the gateway needs of a relay.

A relay owns the path from the upstream to this process's `Hub`: it runs (or follows)
the upstream, turns trades into frames (`protocol.encode_trades`, the one place that
happens) and publishes them into the hub, with upstream state, refusals, the market's
session and bars. It hands its long-running duties to the supervisor by name and says
what `/health` and `/metrics` show of it. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

Duty = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class ClusterView:
    """A cluster relay's view of the cluster, for /health and /metrics."""

    node: str
    role: str  # "leader" or "follower"
    lease_holder: str | None
    nodes: int
    symbols: int  # wanted cluster-wide
    degraded: bool  # Redis unreachable
    bars_skipped: int  # malformed stored or published bars skipped

    def health(self) -> dict[str, object]:
        return {
            "cluster": "degraded" if self.degraded else "ok",
            "role": self.role,
            "node": self.node,
            "lease_holder": self.lease_holder,
            "cluster_nodes": self.nodes,
            "cluster_symbols": self.symbols,
            "bars_skipped": self.bars_skipped,
        }


class Relay(Protocol):
    def duties(self) -> dict[str, Duty]:
        """The core tasks to supervise, by the name /health reports a crashed one by."""
        ...

    def cluster_view(self) -> ClusterView | None:
        """None in a single process."""
        ...

    def failing(self) -> dict[str, str]:
        """Pieces it restarts by itself that crash-loop (name -> what ended them), which
        the supervisor counts as down."""
        ...
