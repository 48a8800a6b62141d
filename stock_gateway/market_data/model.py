"""What the upstream side and the fan-out side share, so that neither imports the other.

- `Trade`: one valid trade, as Finnhub reports it; `Quote`: a price from Finnhub's
  REST `/quote`; `MarketStatus`: the market's session; `UpstreamState`: how the
  upstream connection is doing.
- `SymbolInterest`: the symbols somebody wants carried upstream, plus an event that
  fires on every change. The hub edits it (`want` / `release`); exactly one follower
  acts on it: the feed in a single process, the cluster's interest publisher in
  scale-out mode (whose leader feeds its own `SymbolInterest`, set to the union).

Values and one event only: this module never does I/O and never knows who follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple, get_args

Session = Literal["closed", "pre-market", "regular", "post-market"]
SESSIONS: tuple[Session, ...] = ("closed", "pre-market", "regular", "post-market")
# "unauthorized": Finnhub refused the key (HTTP 401/403); retried with backoff.
UpstreamState = Literal["connecting", "connected", "reconnecting", "unauthorized"]
UPSTREAM_STATES: tuple[UpstreamState, ...] = get_args(UpstreamState)


class NotSent(Enum):
    """A trade field the upstream left out (`c` may be absent: then it stays absent)."""

    NOT_SENT = "not sent"


NOT_SENT = NotSent.NOT_SENT
# Finnhub's trade conditions (`c`): a list of codes, `null` (crypto), or absent.
Conditions = tuple[str, ...] | None | NotSent


class Trade(NamedTuple):
    symbol: str
    price: float
    volume: float
    timestamp: int  # Unix milliseconds, as Finnhub sends it
    conditions: Conditions = NOT_SENT  # kept for clients that speak Finnhub's protocol


@dataclass(frozen=True)
class Quote:
    price: float
    change: float | None
    change_percent: float | None
    open: float
    high: float
    low: float
    previous_close: float
    timestamp: int  # Unix milliseconds (Finnhub's REST sends seconds)


@dataclass(frozen=True)
class MarketStatus:
    exchange: str
    is_open: bool
    session: Session
    holiday: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SymbolInterest:
    """A set of wanted symbols and a "changed" event for its one follower.

    Followers reconcile rather than replay: after `wait_changed()` returns they read
    `symbols` and make the world match it, so changes that pile up meanwhile are
    never lost and never applied twice.
    """

    def __init__(self) -> None:
        self._symbols: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

    def want(self, symbol: str) -> None:
        if symbol not in self._symbols:
            self._symbols.add(symbol)
            self._changed.set()

    def release(self, symbol: str) -> None:
        if symbol in self._symbols:
            self._symbols.discard(symbol)
            self._changed.set()

    def replace(self, symbols: Iterable[str]) -> None:
        """Make the set exactly `symbols` (the cluster leader follows the union)."""
        wanted = set(symbols)
        if wanted != self._symbols:
            self._symbols = wanted
            self._changed.set()

    async def wait_changed(self) -> None:
        """Return once the set changed since the last call (or at once if it did)."""
        await self._changed.wait()
        self._changed.clear()
