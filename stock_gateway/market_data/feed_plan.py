"""Which symbols ride the upstream's few socket slots, and how every other one is served.

Finnhub's free plan carries `MAX_UPSTREAM_SYMBOLS` symbols on its one socket; clients
may want many more. `FeedPlanner` gives every wanted symbol one of three feeds, from
its demand (clients weighted by owner: `owner_weighted`), re-planned on every `plan()`:

- **live**: the most demanded symbols hold a socket slot for as long as they stay among
  the most demanded. A symbol outside takes the slot of the least demanded live one
  only when its demand is more than `HYSTERESIS` above it, so symbols near the boundary
  do not flap;
- **sampled**: the next most demanded take turns on the `sampled_slots` slots kept
  for rotation: each is subscribed until it trades or its turn (`turn_seconds`) ends,
  then the next, never-priced first, then most stale times the square root of demand;
- **polled**: the rest are priced by REST quotes (`poll_order()`, the order to poll
  in; the poller spends only what the REST budget leaves).

While no more symbols are wanted than the socket carries, all of them are live.

Every change of the socket's symbols is one subscribe or unsubscribe message to
Finnhub: the planner spends at most `changes_per_minute` of them (a token bucket) and
never plans more than `socket_slots` symbols on the socket. Time comes from an
injected clock: no I/O, no asyncio, tests need no sleeps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

Feed = Literal["live", "sampled", "polled"]
FEEDS: tuple[Feed, ...] = get_args(Feed)
HYSTERESIS = 0.25  # a challenger needs this much more demand than the one it displaces
NEVER_PRICED_BONUS = 1e9  # a symbol never priced goes before any stale one


def owner_weighted(holders: Mapping[str, int]) -> float:
    """A symbol's demand from its holders (owner -> clients): each owner counts the
    square root of its clients, so many sockets from one party buy little."""
    return sum(math.sqrt(clients) for clients in holders.values() if clients > 0)


@dataclass(frozen=True)
class PlanLimits:
    socket_slots: int  # MAX_UPSTREAM_SYMBOLS
    sampled_slots: int  # SAMPLED_SLOTS: of those, kept for rotation when needed
    turn_seconds: float  # SAMPLE_TURN_SECONDS: a sampled symbol's longest turn
    changes_per_minute: int  # UPSTREAM_CHANGES_PER_MINUTE: subscribes + unsubscribes

    @property
    def rotation_slots(self) -> int:
        """Slots kept for turns once rotating: never more than half the socket."""
        return min(self.sampled_slots, max(1, self.socket_slots // 2))

    @property
    def sampled_symbols(self) -> int:
        """How many symbols the rotation serves (each about once a minute); the rest
        are polled. A turn costs a subscribe and an unsubscribe."""
        by_rate = self.changes_per_minute // 2
        by_slots = int(self.rotation_slots * 60 / max(self.turn_seconds, 0.1))
        return max(self.rotation_slots, min(by_rate, by_slots))


class FeedPlanner:
    def __init__(self, limits: PlanLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._live: set[str] = set()
        self._sampled: set[str] = set()
        self._feeds: dict[str, Feed] = {}
        self._turns: dict[str, float] = {}  # symbol on its turn -> when the turn began
        self._priced: dict[str, float] = {}  # symbol -> when a price last came
        # symbol -> when its last turn ended without a trade: its price was still current
        self._checked: dict[str, float] = {}
        self._first_wanted: dict[str, float] = {}
        self._demand: Mapping[str, float] = {}
        rate = limits.changes_per_minute / 60.0
        self._burst = float(max(2 * limits.socket_slots, 2))
        self._tokens = self._burst
        self._rate = rate
        self._updated = clock()
        self.changes_sent = 0  # socket changes planned (subscribe + unsubscribe)
        self.turnover = 0  # symbols that took or gave up a live slot, or began a turn

    # -- what others read ------------------------------------------------------------

    @property
    def socket(self) -> frozenset[str]:
        """The symbols the upstream socket should carry now: live ones and turns."""
        return frozenset(self._live | self._turns.keys())

    def feed_of(self, symbol: str) -> Feed:
        return self._feeds.get(symbol, "live")

    def feeds(self) -> dict[str, Feed]:
        return dict(self._feeds)

    def counts(self) -> dict[Feed, int]:
        counted = Counter(self._feeds.values())
        return {feed: counted.get(feed, 0) for feed in FEEDS}

    def staleness(self) -> list[float]:
        """Seconds since each wanted symbol's last price (since it was wanted, if none)."""
        now = self._clock()
        return [now - self._priced.get(s, self._first_wanted[s]) for s in self._feeds]

    def poll_order(self) -> list[str]:
        """The symbols REST should price, most urgent first: polled ones, and sampled
        ones no turn has priced yet; never priced first, then stale times demanded."""
        wanting = [
            symbol
            for symbol, feed in self._feeds.items()
            if feed == "polled" or (feed == "sampled" and symbol not in self._priced)
        ]
        return sorted(wanting, key=self._urgency, reverse=True)

    # -- what the planner is told ------------------------------------------------------

    def priced(self, symbol: str) -> None:
        """A price for `symbol` came (a trade, a quote): its turn, if any, may end. A
        symbol not planned yet is remembered too (its first subscriber's quote may come
        before the plan); the next plan forgets it if nobody wants it."""
        self._priced[symbol] = self._clock()

    def plan(self, demand: Mapping[str, float]) -> dict[str, Feed]:
        """Re-plan from every wanted symbol's demand; returns the symbols whose feed
        changed, with their new feed: a new symbol counts only when it is not live (the
        usual case, a few symbols, then costs subscribers no message)."""
        now = self._clock()
        self._refill(now)
        self._demand = demand
        for symbol in [s for s in self._feeds if s not in demand]:
            self._drop(symbol)
        for symbol in [s for s in self._priced if s not in demand]:
            del self._priced[symbol]  # priced before it was planned, and no longer wanted
        for symbol in demand:
            self._first_wanted.setdefault(symbol, now)
        ranked = sorted(demand, key=lambda s: (-demand[s], s))
        rotating = len(demand) > self.limits.socket_slots
        live_cap = self.limits.socket_slots - (self.limits.rotation_slots if rotating else 0)
        self._choose_live(ranked, max(live_cap, 0))
        rest = [s for s in ranked if s not in self._live]
        self._sampled = self._keep_best(self._sampled, rest, self.limits.sampled_symbols)
        self._rotate(now, self.limits.socket_slots - len(self._live))
        changed: dict[str, Feed] = {}
        for symbol in demand:
            # While everything fits, a symbol waiting for the change budget is live all
            # the same: its subscribe is only queued (as the feed paced it before).
            feed: Feed = (
                "live"
                if symbol in self._live or not rotating
                else "sampled"
                if symbol in self._sampled
                else "polled"
            )
            before = self._feeds.get(symbol)
            if before != feed:
                self._feeds[symbol] = feed
                if before is not None or feed != "live":
                    changed[symbol] = feed
        return changed

    # -- the choices -------------------------------------------------------------------

    def _choose_live(self, ranked: list[str], cap: int) -> None:
        demand = self._demand
        while len(self._live) > cap:  # the socket now needs rotation slots
            self._unsubscribe(min(self._live, key=lambda s: (demand[s], s)), live=True)
        for symbol in ranked:
            if len(self._live) >= cap:
                break
            if symbol not in self._live and self._afford(symbol):
                self._subscribe(symbol, live=True)
        for challenger in ranked:
            if challenger in self._live:
                continue
            weakest = min(self._live, key=lambda s: (demand[s], s), default=None)
            if weakest is None or demand[challenger] <= demand[weakest] * (1 + HYSTERESIS):
                break  # ranked: no later challenger beats it either
            if not self._afford(challenger, extra=1):
                break
            self._unsubscribe(weakest, live=True)
            self._subscribe(challenger, live=True)

    def _keep_best(self, current: set[str], ranked: list[str], cap: int) -> set[str]:
        """The `cap` most demanded of `ranked`, keeping members unless clearly beaten."""
        demand = self._demand
        allowed = set(ranked)
        kept = {s for s in current if s in allowed}
        while len(kept) > cap:
            kept.discard(min(kept, key=lambda s: (demand[s], s)))
        for symbol in ranked:
            if symbol in kept:
                continue
            if len(kept) < cap:
                kept.add(symbol)
                continue
            weakest = min(kept, key=lambda s: (demand[s], s), default=None)
            if weakest is None or demand[symbol] <= demand[weakest] * (1 + HYSTERESIS):
                break
            kept.discard(weakest)
            kept.add(symbol)
        return kept

    def _rotate(self, now: float, slots: int) -> None:
        """End the turns that are over; give the free slots to the next sampled ones."""
        for symbol, began in list(self._turns.items()):
            over = now - began >= self.limits.turn_seconds
            traded = self._priced.get(symbol, -math.inf) >= began
            if symbol in self._live:
                del self._turns[symbol]  # promoted while on its turn: the slot stays
            elif over or traded or symbol not in self._sampled or len(self._turns) > slots:
                self._unsubscribe(symbol, live=False)
                self._checked[symbol] = now
        waiting = sorted(
            (s for s in self._sampled if s not in self._turns),
            key=self._urgency,
            reverse=True,
        )
        for symbol in waiting:
            if len(self._turns) >= slots or not self._afford(symbol, extra=1):
                break
            self._subscribe(symbol, live=False)
            self._turns[symbol] = now

    def _urgency(self, symbol: str) -> float:
        """Staleness times the square root of demand: the most wanted first, but a
        little-wanted symbol is not starved (most symbols past the socket are wanted by
        a few clients, and each of them sees its price age)."""
        now = self._clock()
        demand = math.sqrt(self._demand.get(symbol, 0.0))
        checked = max(self._checked.get(symbol, -math.inf), self._first_wanted[symbol])
        priced = self._priced.get(symbol)
        if priced is None:
            return NEVER_PRICED_BONUS + (now - checked) * max(demand, 1e-3)
        return (now - max(priced, checked)) * max(demand, 1e-3)

    # -- the socket's changes, within the rate -------------------------------------------

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def _afford(self, symbol: str, extra: int = 0) -> bool:
        """Whether putting `symbol` on the socket (and `extra` changes more) fits the rate."""
        cost = (0 if symbol in self.socket else 1) + extra
        return self._tokens >= cost

    def _subscribe(self, symbol: str, *, live: bool) -> None:
        if symbol not in self.socket:
            self._spend()
        if live:
            self._live.add(symbol)
            self._turns.pop(symbol, None)
        self.turnover += 1

    def _unsubscribe(self, symbol: str, *, live: bool) -> None:
        if live:
            self._live.discard(symbol)
        else:
            self._turns.pop(symbol, None)
        if symbol not in self.socket:
            self._spend()  # an unsubscribe is owed even in debt: never over the cap
        if live:
            self.turnover += 1

    def _spend(self) -> None:
        self._tokens -= 1
        self.changes_sent += 1

    def _drop(self, symbol: str) -> None:
        if symbol in self._live:
            self._unsubscribe(symbol, live=True)
        if symbol in self._turns:
            self._unsubscribe(symbol, live=False)
        self._sampled.discard(symbol)
        for table in (self._feeds, self._priced, self._checked, self._first_wanted):
            table.pop(symbol, None)
