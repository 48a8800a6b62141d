"""An offline model of the symbols scenario (bench/symbols.py), for choosing the feed
planner's settings in seconds instead of a 12-minute run.

The real `FeedPlanner` (market_data/feed_plan.py) on a simulated clock, planning every
0.25 s; a market of Poisson trades at the scenario's Zipf rates (seen only while a
symbol is on the socket); the scenario's clients, symbols and arrival times
(`demand_plan`); a REST budget of `symbols_rest_rate` less the gateway's margin a
minute, subscribers' quotes first (as delivery/quote_delivery.py asks them), then polls
evenly spaced while more than a few calls are free; and the bench's own yardstick
(bench/freshness.py), the naive baseline beside it. It models no network, no pacing of
subscribe frames and no cluster, so the real run comes out a few seconds slower on
first prices (BENCHMARKS.md, "Every symbol served, by trade rate").

    python -m bench.symbols_model [--set symbols_count=500] [--plan sampled_slots=25]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from bisect import bisect_right
from collections import Counter, deque
from typing import Any

import orjson

from bench.config import Config, with_overrides
from bench.freshness import add_lag, quantiles
from bench.symbols import demand_plan, first_prices, naive
from stock_gateway.market_data.feed_plan import FeedPlanner, PlanLimits
from stock_gateway.market_data.quote_polls import POLL_HEADROOM
from stock_gateway.market_data.rest_budget import usable_rate
from stock_gateway.settings import Settings

STEP = 0.25  # seconds between plans, as market_data/planned_upstream.py
QUOTE_TTL = Settings().quote_ttl
QUOTE_WAIT = Settings().quote_wait
ADDRESSES = 8  # the load's client addresses, each an owner (bench/symbols.py)
BASE_MS = 1_000_000_000_000  # the model's clock 0, in Unix ms


def market(config: Config, rng: random.Random) -> dict[str, list[float]]:
    """Each symbol's trade times (s): an opening trade at 0, then Poisson at its rate."""
    symbols = [f"Z{rank:03d}" for rank in range(1, config.symbols_count + 1)]
    total = sum(rank**-1.0 for rank in range(1, len(symbols) + 1))
    times: dict[str, list[float]] = {}
    for rank, symbol in enumerate(symbols, 1):
        rate, at, trades = config.symbols_rate * rank**-1.0 / total, 0.0, [0.0]
        while (at := at + rng.expovariate(rate)) <= config.symbols_seconds + 5:
            trades.append(at)
        times[symbol] = trades
    return times


class Model:
    def __init__(self, config: Config, limits: PlanLimits, seed: int) -> None:
        self.config = config
        self.now = 0.0
        self.planner = FeedPlanner(limits, lambda: self.now)
        self.times = market(config, random.Random(seed))
        _, self.plan = demand_plan(config)
        ramp = config.symbols_ramp / max(len(self.plan), 1)
        self.arrive_at = [index * ramp for index in range(len(self.plan))]
        self.rest_per_minute = usable_rate(config.symbols_rest_rate)
        self.subscribers: dict[str, list[int]] = {}
        self.owners: dict[str, Counter[int]] = {}
        self.held: dict[tuple[int, str], int] = {}  # (client, symbol) -> trade index held
        self.snapshot: dict[str, int] = {}  # the gateway's last trade of each symbol
        self.cached: dict[str, tuple[float, int]] = {}  # quote: when, trade index
        self.quoted: set[str] = set()  # symbols whose previous close is known
        self.asks: dict[str, tuple[float, list[int]]] = {}  # symbol -> deadline, askers
        self.calls: deque[float] = deque()
        self.next_poll = 0.0
        self.seen = {symbol: 1 for symbol in self.times}  # next trade index not yet past
        self.first_wanted: dict[str, float] = {}
        self.first_priced: dict[str, float] = {}
        self.lags: dict[str, Counter[int]] = {symbol: Counter() for symbol in self.times}
        self.joined = 0
        self.unavailable = 0
        self.max_carried = 0

    def run(self) -> dict[str, Any]:
        for step in range(int(self.config.symbols_seconds / STEP) + 1):
            self.now = step * STEP
            self.arrive()
            self.trade()
            self.fetch()
            demand = {
                symbol: sum(math.sqrt(clients) for clients in owners.values())
                for symbol, owners in self.owners.items()
            }
            self.planner.plan(demand)
            self.max_carried = max(self.max_carried, len(self.planner.socket))
            if step % int(1 / STEP) == 0 and self.now >= 1:
                self.sample()
        return self.report()

    def give(self, client: int, symbol: str, index: int) -> None:
        if index > self.held.get((client, symbol), -1):
            self.held[(client, symbol)] = index
        self.first_priced.setdefault(symbol, self.now)

    def arrive(self) -> None:
        while self.joined < len(self.plan) and self.arrive_at[self.joined] <= self.now:
            client, self.joined = self.joined, self.joined + 1
            for symbol in self.plan[client]:
                self.subscribers.setdefault(symbol, []).append(client)
                self.owners.setdefault(symbol, Counter())[client % ADDRESSES] += 1
                self.first_wanted.setdefault(symbol, self.now)
                if (snapshot := self.snapshot.get(symbol)) is not None:
                    self.give(client, symbol, snapshot)
                cached = self.cached.get(symbol)
                past_socket = self.planner.feed_of(symbol) != "live"  # its last, however old
                if cached and (self.now - cached[0] < QUOTE_TTL or past_socket):
                    self.give(client, symbol, cached[1])
                elif self.asks_quote(symbol, quiet=snapshot is not None):
                    deadline, askers = self.asks.get(symbol, (self.now + QUOTE_WAIT, []))
                    self.asks[symbol] = deadline, [*askers, client]

    def asks_quote(self, symbol: str, *, quiet: bool) -> bool:
        """As delivery/quote_delivery.py decides."""
        if self.planner.feed_of(symbol) != "live":
            return False
        return not (quiet and self.planner.rotating and symbol in self.quoted)

    def trade(self) -> None:
        for symbol, times in self.times.items():
            index = self.seen[symbol]
            while index < len(times) and times[index] <= self.now:
                index += 1
            if index != self.seen[symbol] and symbol in self.planner.socket:
                self.snapshot[symbol] = index - 1
                self.planner.traded(symbol, index - self.seen[symbol])
                for client in self.subscribers.get(symbol, []):
                    self.give(client, symbol, index - 1)
            self.seen[symbol] = index

    def fetch(self) -> None:
        while self.calls and self.calls[0] <= self.now - 60:
            self.calls.popleft()
        for symbol in [s for s, (deadline, _) in self.asks.items() if deadline <= self.now]:
            self.unavailable += len(self.asks.pop(symbol)[1])
        while self.asks and len(self.calls) < self.rest_per_minute:
            symbol = next(iter(self.asks))
            self.quote(symbol, self.asks.pop(symbol)[1])
        free = self.rest_per_minute - len(self.calls)
        if self.asks or free <= POLL_HEADROOM or self.now < self.next_poll:
            return
        if order := self.planner.poll_order():
            self.next_poll = max(self.next_poll + 60 / (self.rest_per_minute - 1), self.now - STEP)
            self.quote(order[0], self.subscribers.get(order[0], []))

    def quote(self, symbol: str, told: list[int]) -> None:
        self.calls.append(self.now)
        index = bisect_right(self.times[symbol], self.now) - 1
        self.cached[symbol] = self.now, index
        self.quoted.add(symbol)
        self.planner.priced(symbol)
        for client in told:
            self.give(client, symbol, index)

    def sample(self) -> None:
        for client in range(self.joined):
            for symbol in self.plan[client]:
                held, times = self.held.get((client, symbol)), self.times[symbol]
                if held is None:
                    lag = self.now - self.arrive_at[client]
                elif held + 1 < len(times) and times[held + 1] <= self.now:
                    lag = self.now - times[held + 1]
                else:
                    lag = 0.0
                add_lag(self.lags[symbol], lag)

    def report(self) -> dict[str, Any]:
        wanted = {s: BASE_MS + int(at * 1000) for s, at in self.first_wanted.items()}
        priced = {s: BASE_MS + int(at * 1000) for s, at in self.first_priced.items()}
        minutes = self.config.symbols_seconds / 60
        return {
            "lag_by_demand": quantiles(self.lags),
            "lag_by_symbol": quantiles(self.lags, by_symbol=True),
            **first_prices(wanted, priced, BASE_MS + int(self.config.symbols_seconds * 1000)),
            "symbols_by_feed": self.planner.counts(),
            "subscribe_messages_per_minute": round(self.planner.changes_sent / minutes, 1),
            "quote_unavailable": self.unavailable,
            "max_carried": self.max_carried,
        }

    def naive(self) -> dict[str, Any]:
        raw = {
            symbol: [[BASE_MS + int(at * 1000), float(index)] for index, at in enumerate(times)]
            for symbol, times in self.times.items()
        }
        joined: list[int | None] = [BASE_MS + int(at * 1000) for at in self.arrive_at]
        return naive(self.config, self.plan, raw, joined)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], help="a Config FIELD=VALUE")
    parser.add_argument("--plan", action="append", default=[], help="a PlanLimits FIELD=VALUE")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = with_overrides(Config(), args.set)
    settings = Settings()
    defaults = PlanLimits(
        socket_slots=config.symbols_slots,
        sampled_slots=settings.sampled_slots,
        turn_seconds=settings.sample_turn_seconds,
        changes_per_minute=settings.upstream_changes_per_minute,
        polls_per_second=(usable_rate(config.symbols_rest_rate) - 1) / 60,
    )
    limits = with_overrides(defaults, args.plan)
    model = Model(config, limits, args.seed)
    planner, baseline = model.run(), model.naive()
    ratio = planner["lag_by_symbol"]["p95"] / max(baseline["lag_by_symbol"]["p95"], 1e-9)
    report = {"planner": planner, "naive": baseline, "p95_by_symbol_ratio": round(ratio, 2)}
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
