"""What one client holds: its symbols (prices), its bar subscriptions, whose fair share
they use and what its token entitles it to.

`ClientHoldings` is the part of a client (outbox.py's `ClientConnection`) that the hub,
bar delivery and the holds read to decide what it may have and what it gets; changed
only through these methods. Plain bookkeeping: it never sends anything.
"""

from __future__ import annotations

from stock_gateway.access.entitlements import Entitlements
from stock_gateway.bars.book import Interval


class ClientHoldings:
    """A client's symbols, bar intervals, owner, address and entitlements."""

    def __init__(self, owner: str, address: str, entitlements: Entitlements) -> None:
        self.owner = owner  # whose fair share of the upstream its symbols use
        self.address = address  # its address (or /64): quote fetches are charged to it too
        self.entitlements = entitlements  # a refreshed token may change them
        self.symbols: set[str] = set()  # price updates
        self.bar_intervals: dict[str, set[Interval]] = {}  # symbol -> bar subscriptions

    def hold(self, symbol: str) -> None:
        self.symbols.add(symbol)

    def release(self, symbol: str) -> None:
        self.symbols.discard(symbol)

    def hold_bars(self, symbol: str, interval: Interval) -> None:
        self.bar_intervals.setdefault(symbol, set()).add(interval)

    def release_bars(self, symbol: str, interval: Interval) -> None:
        intervals = self.bar_intervals.get(symbol)
        if intervals is not None:
            intervals.discard(interval)
            if not intervals:
                del self.bar_intervals[symbol]

    def set_entitlements(self, entitlements: Entitlements) -> None:
        """A refreshed token's (the session drops what they no longer allow)."""
        self.entitlements = entitlements

    def wants(self, symbol: str) -> bool:
        """True while the client holds `symbol` for prices or bars."""
        return symbol in self.symbols or symbol in self.bar_intervals

    def wanted_count(self) -> int:
        """Distinct symbols held, for prices or bars: what the per-client cap counts."""
        return len(self.symbols) + sum(1 for s in self.bar_intervals if s not in self.symbols)
