"""Which symbols ride the upstream's few socket slots, and how every other one is served.

Finnhub's free plan carries `MAX_UPSTREAM_SYMBOLS` symbols on its one socket; clients
may want many more. `FeedPlanner` gives every wanted symbol one of three feeds, from
its demand (clients weighted by owner: `owner_weighted`) and how often it trades
(trade_rates.py), re-planned on every `plan()`:

- **live**: the most demanded symbols hold a socket slot for as long as they stay among
  the most demanded. A symbol outside takes the slot of the least demanded live one
  only when its demand is more than `HYSTERESIS` above it, so symbols near the boundary
  do not flap;
- **sampled**: of the rest, those that trade most often take turns on the
  `rotation_slots` slots kept for rotation: each is subscribed until it trades or its
  turn ends (about two of its trade gaps, at most `turn_seconds`), then the next, the
  one whose price is probably most out of date (trade_rates.py: `expected_lag`);
- **polled**: the rest, which trade rarely (a turn would mostly wait), are priced by
  REST quotes (`poll_order()`, the order to poll in; the poller spends only what the
  REST budget leaves), most out of date first, the same way.

How many are sampled follows both budgets (rotation.py). A symbol never priced goes
first: a turn (a trade is free), then, if none came, a poll before any other. All are
live while the socket carries every wanted symbol; one nobody holds takes no turn.

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

from stock_gateway.market_data.rotation import keep_best, sample_count, turn_length
from stock_gateway.market_data.trade_rates import TradeRates
from stock_gateway.runtime.token_bucket import TokenBucket

Feed = Literal["live", "sampled", "polled"]
FEEDS: tuple[Feed, ...] = get_args(Feed)
HYSTERESIS = 0.25  # a challenger needs this much more demand (or trades) than the one it displaces
NEVER_PRICED_BONUS = 1e9  # a symbol never priced goes before any stale one
FEED_DWELL = 60.0  # seconds a symbol stays sampled or polled before it may change again
QUIET_SOCKET = 30.0  # no trade at all for this long: market closed, or upstream down


def unplanned_feed(rotating: bool) -> Feed:
    """What a symbol not planned yet is said to be: live, or past a full socket a turn."""
    return "sampled" if rotating else "live"


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
    polls_per_second: float  # REST quotes the poller may make (0: none)

    @property
    def rotation_slots(self) -> int:
        """Slots kept for turns once rotating: never more than half the socket."""
        return min(self.sampled_slots, max(1, self.socket_slots // 2))


class FeedPlanner:
    def __init__(self, limits: PlanLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self.rates = TradeRates()
        self._live: set[str] = set()
        self._sampled: set[str] = set()
        self._feeds: dict[str, Feed] = {}
        # On its turn -> (since, length): fixed, as waiting lowers the symbol's rate.
        self._turns: dict[str, tuple[float, float]] = {}
        self._priced: dict[str, float] = {}  # symbol -> when a price last came
        self._probed: dict[str, float] = {}  # never priced, turn without a trade: its end
        self._feed_since: dict[str, float] = {}  # when each one's feed last changed
        self._first_wanted: dict[str, float] = {}
        self._demand: Mapping[str, float] = {}
        self.rotating = False  # more symbols wanted than the socket carries
        # Subscribe and unsubscribe messages: a burst of two socketfuls, then the rate.
        rate, burst = limits.changes_per_minute / 60.0, max(2 * limits.socket_slots, 2)
        self._changes = TokenBucket(rate, burst, clock())
        self._planned_at = clock()
        self._last_trade = -math.inf  # when the socket last brought a trade, any symbol's
        self.changes_sent = 0  # socket changes planned (subscribe + unsubscribe)
        self.turnover = 0  # symbols that took or gave up a live slot, or began a turn

    # -- what others read ------------------------------------------------------------

    @property
    def socket(self) -> frozenset[str]:
        """The symbols the upstream socket should carry now: live ones and turns."""
        return frozenset(self._live | self._turns.keys())

    def feed_of(self, symbol: str) -> Feed:
        """A symbol not planned yet, while the socket is full: "sampled" (its first
        price: a turn, as planned; the plan may make it live or polled a moment later)."""
        return self._feeds.get(symbol, unplanned_feed(self.rotating))

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
        """The symbols REST should price, most urgent first: polled ones, and any not
        live and never priced whose turn brought no trade (or that waited a longest
        turn for one); never priced first, then probably most out of date."""
        now = self._clock()
        wanting = [s for s, feed in self._feeds.items() if self._pollable(s, feed, now)]
        return sorted(wanting, key=self._poll_urgency, reverse=True)

    # -- what the planner is told ------------------------------------------------------

    def priced(self, symbol: str) -> None:
        """A price for `symbol` came (a trade, a quote): its turn, if any, may end. One
        not planned yet is remembered too; the next plan forgets it if nobody wants it."""
        self._priced[symbol] = self._clock()
        self._probed.pop(symbol, None)

    def traded(self, symbol: str, trades: int) -> None:
        """Trades of `symbol` came on the socket: a price, and its rate (not for one no
        longer planned: trades still on their way after it left)."""
        self._last_trade = self._clock()
        if symbol in self._feeds:
            self.rates.traded(symbol, trades)
        self.priced(symbol)

    def plan(self, demand: Mapping[str, float]) -> dict[str, Feed]:
        """Re-plan from every wanted symbol's demand; returns the symbols whose feed
        changed, with their new feed (a new symbol's only if `feed_of` said otherwise)."""
        now = self._clock()
        if now - self._last_trade <= QUIET_SOCKET:  # else nothing could trade: no lesson
            self.rates.carried(self.socket, now - self._planned_at)
        self._planned_at = now
        self._demand = demand
        for symbol in [s for s in self._feeds if s not in demand]:
            self._drop(symbol)
        for symbol in [s for s in self._priced if s not in demand]:
            del self._priced[symbol]  # priced before it was planned, and no longer wanted
        for symbol in demand:
            self._first_wanted.setdefault(symbol, now)
        ranked = sorted(demand, key=lambda s: (-demand[s], s))
        unplanned = unplanned_feed(self.rotating)  # what one not planned yet was said
        rotating = self.rotating = len(demand) > self.limits.socket_slots
        live_cap = self.limits.socket_slots - (self.limits.rotation_slots if rotating else 0)
        self._choose_live(ranked, max(live_cap, 0))
        by_rate = sorted(  # the ones held past the socket (lingering ones take no turn)
            (s for s in ranked if s not in self._live and demand[s] > 0),
            key=lambda s: (-self.rates.rate(s), s),
        )
        self._sampled = self._split(now, by_rate)
        self._rotate(now, self.limits.socket_slots - len(self._live))
        changed: dict[str, Feed] = {}
        for symbol in demand:
            if not demand[symbol] and self._feeds.get(symbol, "live") != "live":
                continue  # lingering: nobody to tell, nothing served; its feed stays
            # While everything fits, one waiting for the change budget is live: queued.
            feed: Feed = (
                "live"
                if symbol in self._live or not rotating
                else "sampled"
                if symbol in self._sampled
                else "polled"
            )
            if self._feeds.get(symbol) != feed:
                if self._feeds.get(symbol, unplanned) != feed:
                    changed[symbol] = feed
                self._feeds[symbol] = feed
                self._feed_since[symbol] = now
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

    def _split(self, now: float, by_rate: list[str]) -> set[str]:
        """The sampled ones of `by_rate` (not live, most often trading first): about
        `sample_count` of them, the most often trading, keeping members unless clearly
        beaten; a symbol whose feed changed less than `FEED_DWELL` ago keeps it (rates
        are estimates: two symbols close in rate must not trade places at every turn)."""
        settled = [s for s in by_rate if now - self._feed_since.get(s, -math.inf) >= FEED_DWELL]
        pinned = self._sampled.intersection(by_rate).difference(settled)
        count = sample_count(
            [self.rates.rate(s) for s in by_rate],
            slots=self.limits.rotation_slots,
            longest_turn=self.limits.turn_seconds,
            changes_per_minute=self.limits.changes_per_minute,
            polls_per_second=self.limits.polls_per_second,
        )
        # The rotation's slots are never idle while a symbol is polled: a turn costs no
        # call, and teaches the symbol's rate.
        count = max(count, min(self.limits.rotation_slots, len(by_rate)))
        cap = max(0, count - len(pinned))
        kept = keep_best(self._sampled, settled, cap, self.rates.rate, HYSTERESIS)
        return pinned | kept

    def _takes_turns(self, symbol: str) -> bool:
        """Sampled, or never priced and not yet tried (its first price: a turn first)."""
        if symbol in self._sampled:
            return True
        if symbol in self._live or symbol in self._priced or symbol in self._probed:
            return False
        return self._demand.get(symbol, 0.0) > 0

    def _pollable(self, symbol: str, feed: Feed, now: float) -> bool:
        if feed == "live" or symbol in self._turns or not self._demand.get(symbol, 0.0):
            return False
        if symbol in self._priced:
            return feed == "polled"
        waited = now - self._first_wanted.get(symbol, now)
        return symbol in self._probed or waited >= self.limits.turn_seconds

    def _rotate(self, now: float, slots: int) -> None:
        """End the turns that are over; give the free slots to the next ones (one whose
        turn just ended may take the next: it stays subscribed, no message either way)."""
        ended: list[str] = []
        for symbol, (began, length) in list(self._turns.items()):
            over = now - began >= length
            traded = self._priced.get(symbol, -math.inf) >= began
            if symbol in self._live:
                del self._turns[symbol]  # promoted while on its turn: the slot stays
            elif over or traded or not self._takes_turns(symbol) or len(self._turns) > slots:
                del self._turns[symbol]
                ended.append(symbol)
                if over and symbol not in self._priced:
                    self._probed[symbol] = now
        waiting = sorted(
            (s for s in self._demand if s not in self._turns and self._takes_turns(s)),
            key=self._turn_urgency,
            reverse=True,
        )
        for symbol in waiting:
            again = symbol in ended
            if len(self._turns) >= slots:
                break
            if again:
                ended.remove(symbol)
                self.turnover += 1
            elif self._afford(symbol, extra=1 + len(ended)):  # and the ended ones' leaving
                self._subscribe(symbol, live=False)
            else:
                break
            length = turn_length(self.rates.rate(symbol), self.limits.turn_seconds)
            self._turns[symbol] = now, length
        for symbol in ended:
            self._unsubscribe(symbol, live=False)

    def _poll_urgency(self, symbol: str) -> tuple[float, float]:
        """Never priced: before all, the longest waiting first (its first subscriber
        waits). Then the price most probably out of date (`expected_lag`), then demand.
        Past the socket every symbol counts alike: demand chose the live ones, and each
        of the rest is wanted by a few clients who each see its price age."""
        now = self._clock()
        priced = self._priced.get(symbol)
        if priced is None:
            return NEVER_PRICED_BONUS + now - self._first_wanted[symbol], 0.0
        return self.rates.expected_lag(symbol, now - priced), self._demand.get(symbol, 0.0)

    def _turn_urgency(self, symbol: str) -> tuple[float, float]:
        """As for polls, but a never-priced symbol whose turn brought no trade waits like
        any other (REST prices it first): since that turn."""
        if symbol in self._probed:
            lag = self.rates.expected_lag(symbol, self._clock() - self._probed[symbol])
            return lag, self._demand.get(symbol, 0.0)
        return self._poll_urgency(symbol)

    # -- the socket's changes, within the rate -------------------------------------------

    def _afford(self, symbol: str, extra: int = 0) -> bool:
        """Whether putting `symbol` on the socket (and `extra` changes more) fits the rate."""
        cost = (0 if symbol in self.socket else 1) + extra
        return self._changes.wait(self._clock(), cost) == 0.0

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
        self._changes.spend(self._clock(), 1)
        self.changes_sent += 1

    def _drop(self, symbol: str) -> None:
        if symbol in self._live:
            self._unsubscribe(symbol, live=True)
        if symbol in self._turns:
            self._unsubscribe(symbol, live=False)
        self._sampled.discard(symbol)
        self.rates.forget(symbol)
        for table in (
            self._feeds,
            self._feed_since,
            self._priced,
            self._probed,
            self._first_wanted,
        ):
            table.pop(symbol, None)
