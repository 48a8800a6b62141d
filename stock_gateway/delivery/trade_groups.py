"""Raw trades for clients that speak a dialect which carries them (Finnhub's own
protocol, endpoints/finnhub_ws.py): for each upstream message, one frame per client
with that client's trades of it, in upstream order.

Clients of one dialect following the same symbols receive exactly the same frames, so
they form one `TradeGroup`: each upstream message is filtered and encoded once per
group, and the same bytes go to every member (as paced clients share their work in
delivery/pacing.py). A member whose symbols change moves to the group its new set calls
for. This module never touches sockets: it offers whole frames to members.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from stock_gateway.market_data.model import Trade
from stock_gateway.protocol import Frame


class TradeDialect(Protocol):
    """How a dialect encodes what the hub sends its clients."""

    name: str

    def trades(self, trades: Sequence[Trade]) -> Frame:
        """One upstream message's trades for one client, in upstream order."""
        ...

    def error(self, message: str) -> Frame:
        """A refusal (the connection stays open)."""
        ...


class TradeFollower(Protocol):
    """A client as its trade group sees it."""

    symbols: set[str]
    trade_group: TradeGroup | None

    def send(self, frame: Frame) -> None: ...


GroupKey = tuple[TradeDialect, frozenset[str]]


class TradeGroup:
    def __init__(self, key: GroupKey) -> None:
        self.key = key
        self.members: set[TradeFollower] = set()


class TradeGroups:
    """Every trade-following client's group, and which groups want each symbol."""

    def __init__(self) -> None:
        self._groups: dict[GroupKey, TradeGroup] = {}
        self._by_symbol: dict[str, set[TradeGroup]] = {}
        self._followers: dict[str, int] = {}  # symbol -> clients following its trades

    def __bool__(self) -> bool:
        """True while any client follows raw trades."""
        return bool(self._groups)

    def followers_of(self, symbol: str) -> int:
        return self._followers.get(symbol, 0)

    def place(self, member: TradeFollower, dialect: TradeDialect) -> None:
        """Put `member` in the group its dialect and symbols call for (none if it holds
        nothing)."""
        key = (dialect, frozenset(member.symbols)) if member.symbols else None
        old = member.trade_group
        if old is not None and old.key == key:
            return
        self.remove(member)
        if key is None:
            return
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = TradeGroup(key)
            for symbol in key[1]:
                self._by_symbol.setdefault(symbol, set()).add(group)
        group.members.add(member)
        member.trade_group = group
        for symbol in key[1]:
            self._followers[symbol] = self._followers.get(symbol, 0) + 1

    def remove(self, member: TradeFollower) -> None:
        group = member.trade_group
        if group is None:
            return
        member.trade_group = None
        group.members.discard(member)
        for symbol in group.key[1]:
            left = self._followers[symbol] - 1
            if left:
                self._followers[symbol] = left
            else:
                del self._followers[symbol]
        if group.members:
            return
        del self._groups[group.key]
        for symbol in group.key[1]:
            groups = self._by_symbol[symbol]
            groups.discard(group)
            if not groups:
                del self._by_symbol[symbol]

    def deliver(self, trades: Sequence[Trade]) -> int:
        """One upstream message's trades to every group that follows any of them; returns
        how many frames were offered."""
        groups: set[TradeGroup] = set()
        for symbol in {trade.symbol for trade in trades}:
            groups |= self._by_symbol.get(symbol, _NONE)
        offered = 0
        for group in groups:
            dialect, symbols = group.key
            frame = dialect.trades([trade for trade in trades if trade.symbol in symbols])
            for member in group.members:
                member.send(frame)
            offered += len(group.members)
        return offered


_NONE: set[TradeGroup] = set()
