"""Who may spend how much of the key's REST budget: the policy's arithmetic, in one place.

The gateway makes `usable_rate(FINNHUB_REST_RATE)` calls a minute (the plan less a
margin for anything else using the key; "a minute" of the plan is its window,
`FINNHUB_REST_WINDOW` seconds, which the budget and the shares' windows and spacings
span). Of those, in any such window:

- **one-off lookups** (`GET /quote` of a symbol nobody subscribes to) spend at most
  `QUOTE_LOOKUP_SHARE` of them;
- **forwarded calls** (the REST mirror, `GET /api/v1/...`) at most `FINNHUB_REST_SHARE`,
  and one address (or user) at most a `FAIR_ADDRESSES`-th of that (or its
  `FINNHUB_REST_REQUESTS_PER_ADDRESS`, if smaller; an address's allowance counts a
  clock's minute, so a window shorter than that only makes it stricter): two busy
  addresses can never leave a third none;
- **the rest is reserved** (at least `QUOTE_SUBSCRIBER_SHARE`: settings.py refuses
  shares that add up to more than the whole) for what neither may take: the quotes of
  symbols clients hold (a subscriber's quote, a refresh at a session change) and the
  market-status poll.

Each share is rounded down, so lookups and forwarded calls together never exceed the
usable rate less the reserve, whatever the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stock_gateway.market_data.rest_budget import usable_rate
from stock_gateway.settings import Settings

# A forwarded call's share serves at least this many addresses at their full allowance.
FAIR_ADDRESSES = 3


@dataclass(frozen=True)
class RestShares:
    usable: int  # calls a minute the gateway makes of the plan
    lookups: int  # one-off GET /quote lookups, in any 60 s
    forwarded: int  # the REST mirror's calls, in any 60 s
    forwarded_per_address: float  # ... of one address (or user), a minute
    refreshes: int  # quotes refetched at a session change, a minute (one at a time)

    @property
    def reserved(self) -> int:
        """Calls a minute lookups and forwarded calls can never take: subscribers'."""
        return self.usable - self.lookups - self.forwarded

    @property
    def polls(self) -> int:
        """The pace of polls of the feed planner's polled symbols, a minute: the whole
        usable rate less one for the market-status poll. Polls take only what the budget
        has free (market_data/quote_polls.py: a few calls always left), so they spend
        whatever subscribers, lookups and forwarded calls leave; on a cluster, whose
        shared budget cannot say, the reserve less the market-status poll."""
        return max(1, self.usable - 1)

    @property
    def reserved_polls(self) -> int:
        return max(1, self.reserved - 1)


def rest_shares(settings: Settings) -> RestShares:
    usable = usable_rate(settings.finnhub_rest_rate)
    forwarded = max(1, math.floor(settings.finnhub_rest_share * usable))
    return RestShares(
        usable=usable,
        lookups=max(1, math.floor(settings.quote_lookup_share * usable)),
        forwarded=forwarded,
        forwarded_per_address=min(
            settings.finnhub_rest_requests_per_address, max(1.0, forwarded / FAIR_ADDRESSES)
        ),
        refreshes=max(1, usable // 4),  # a session change's refreshes: a quarter
    )
