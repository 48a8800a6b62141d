"""Raw trades for clients that speak a dialect which carries them (Finnhub's own
protocol, endpoints/finnhub_ws.py): for each upstream message, one frame per client
with that client's trades of it, in upstream order; of each symbol at most the newest
`MAX_TRADES_PER_SYMBOL_PER_MESSAGE`, the bound `/ws`'s price updates have
(market_data/trade_wire.py `newest_per_symbol`).

Clients of one dialect following the same symbols receive exactly the same frames, so
they form one `TradeGroup`: the same bytes go to every member (as paced clients share
their work in delivery/pacing.py). A member whose symbols change moves to the group its
new set calls for. A message's trades are indexed by symbol and encoded once, so a
group's work is joining its own trades' bytes, not filtering and encoding the whole
message; `deliveries` hands the message over group by group and says how much each
cost, so the broadcaster can yield to the event loop in between (hub.py), as it does
for `/ws`. Each address's groups are counted, so the endpoint can cap how many
distinct symbol sets one address makes the gateway build frames for
(`MAX_SYMBOL_SETS_PER_ADDRESS`). This module never touches sockets: it offers whole
frames to members.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Protocol

from stock_gateway.delivery.encoders import TradeFormat
from stock_gateway.market_data.model import Trade
from stock_gateway.market_data.trade_wire import newest_per_symbol
from stock_gateway.protocol import Frame


class TradeFollower(Protocol):
    """A client as its trade group sees it."""

    symbols: set[str]
    address: str  # whose count of symbol sets its group is in

    def send(self, frame: Frame) -> None: ...


GroupKey = tuple[TradeFormat, frozenset[str]]


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
        self._group_of: dict[TradeFollower, TradeGroup] = {}  # each follower's group
        # address -> its groups -> how many of its members are in each
        self._by_address: dict[str, dict[TradeGroup, int]] = {}

    def __bool__(self) -> bool:
        """True while any client follows raw trades."""
        return bool(self._groups)

    def followers_of(self, symbol: str) -> int:
        return self._followers.get(symbol, 0)

    def sets_of(self, address: str) -> int:
        """Distinct symbol sets the clients of `address` follow (groups it is in)."""
        return len(self._by_address.get(address, ()))

    def would_add_set(self, member: TradeFollower, dialect: TradeFormat, symbols: set[str]) -> bool:
        """True if `member` following `symbols` would put its address in one more group:
        a set no client of its address follows yet, while its present group keeps
        another client of its address (or it has none)."""
        if not symbols:
            return False
        held = self._by_address.get(member.address, {})
        group = self._groups.get((dialect, frozenset(symbols)))
        if group is not None and group in held:
            return False
        old = self._group_of.get(member)
        return old is None or held.get(old, 0) > 1

    def place(self, member: TradeFollower, dialect: TradeFormat | None) -> None:
        """Put `member` in the group its dialect and symbols call for (none if it holds
        nothing, or its dialect carries no raw trades)."""
        key = (dialect, frozenset(member.symbols)) if member.symbols and dialect else None
        old = self._group_of.get(member)
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
        self._group_of[member] = group
        held = self._by_address.setdefault(member.address, {})
        held[group] = held.get(group, 0) + 1
        for symbol in key[1]:
            self._followers[symbol] = self._followers.get(symbol, 0) + 1

    def remove(self, member: TradeFollower) -> None:
        group = self._group_of.pop(member, None)
        if group is None:
            return
        group.members.discard(member)
        held = self._by_address[member.address]
        if held[group] > 1:
            held[group] -= 1
        elif len(held) > 1:
            del held[group]
        else:
            del self._by_address[member.address]
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
        """One upstream message's trades to every group that follows any of them, at
        once; returns how many frames were offered."""
        return sum(len(group.members) for group, _ in self._offers(trades))

    def deliveries(self, trades: Sequence[Trade]) -> Iterator[int]:
        """The same, group by group: after each group, the work it took (trades encoded
        plus frames offered), for the caller to yield to the event loop between slices.
        Groups that empty meanwhile are skipped; a member that moves meanwhile gets
        this message's trades or not, as a `/ws` client subscribing mid-message does."""
        for group, encoded in self._offers(trades):
            yield encoded + len(group.members)

    def _offers(self, trades: Sequence[Trade]) -> Iterator[tuple[TradeGroup, int]]:
        if not trades or not self._groups:
            return
        kept, _ = newest_per_symbol(list(trades))  # as /ws: the newest of each symbol
        positions: dict[str, list[int]] = {}  # symbol -> where its trades are in `kept`
        for index, trade in enumerate(kept):
            positions.setdefault(trade.symbol, []).append(index)
        encoded: dict[TradeFormat, list[bytes]] = {}
        groups: set[TradeGroup] = set()
        for symbol in positions:
            groups |= self._by_symbol.get(symbol, _NONE)
        for group in groups:
            if not group.members:
                continue  # left while the broadcaster yielded
            dialect, symbols = group.key
            items = encoded.get(dialect)
            if items is None:  # each trade encoded once per dialect, joined per group
                items = encoded[dialect] = [dialect.encode(trade) for trade in kept]
            wanted = [positions[symbol] for symbol in symbols if symbol in positions]
            # Upstream order across the group's symbols (each list is in order already).
            picked = wanted[0] if len(wanted) == 1 else sorted(chain.from_iterable(wanted))
            frame = dialect.trades([items[index] for index in picked])
            for member in list(group.members):
                member.send(frame)
            yield group, len(picked)


_NONE: set[TradeGroup] = set()
