"""The seam for upstream providers: what the hub, the relays and the cluster need of
an upstream, and what an upstream tells whoever listens.

Finnhub (`finnhub_feed.FinnhubFeed`) is the one provider today. Another one is a class
with the same five members: it keeps its subscriptions equal to `interest`, counts
what it receives in `counters`, reports its `state`, and hands parsed trades, state
changes and refusals to its `UpstreamListener` (a relay). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stock_gateway.market_data.model import SymbolInterest, Trade, UpstreamState


class UpstreamListener(Protocol):
    """Where an upstream delivers: a relay (relay/local.py, cluster/leader.py)."""

    async def trades_received(self, trades: list[Trade], received_at: float) -> None: ...

    def upstream_state_changed(self, state: UpstreamState) -> None: ...

    def upstream_refused(self, symbol: str | None) -> None: ...


@dataclass
class UpstreamCounters:
    """What an upstream connection has seen, for /health and /metrics."""

    messages: int = 0
    trades: int = 0
    malformed: int = 0
    reconnects: int = 0
    frames_sent: int = 0  # subscribe and unsubscribe frames


class Upstream(Protocol):
    interest: SymbolInterest  # what it must carry: its only input
    counters: UpstreamCounters
    state: UpstreamState

    def feed_of(self, symbol: str) -> str:
        """How `symbol`'s trades come: "live" or "sampled" (market_data/feed_plan.py)."""
        ...

    async def run(self, listener: UpstreamListener) -> None:
        """Stay connected (reconnecting as needed) until cancelled."""
        ...
