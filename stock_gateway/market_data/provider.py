"""The seam for a provider's REST side: what quotes, the market watch, the REST mirror,
/health and /metrics need of it, and the one error it raises when it has no answer.

The provider's own client (Finnhub's: finnhub/rest.py) implements `ProviderRest` and
raises `UpstreamUnavailable`, never an error of its own, so nothing outside the
provider's package catches a provider's exception or names the provider. Its texts
may reach a client (`GET /quote` says why no quote came), so they say "the upstream",
and never carry the key. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from stock_gateway.market_data.model import MarketStatus, Quote

RestState = Literal["ok", "unauthorized", "rate_limited", "unreachable"]
REST_STATES: tuple[RestState, ...] = get_args(RestState)
Params = Mapping[str, str] | Sequence[tuple[str, str]]


class UpstreamUnavailable(Exception):
    """No answer within the deadline: the budget spent, the upstream unreachable or
    refusing. `retry_after`: seconds until asking again may help (0: unknown)."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RestAnswer:
    """A forwarded call's answer as the upstream sent it: 200, or a client error."""

    status: int
    body: bytes


class CallBudget(Protocol):
    """Where call slots come from: this process's window, or a cluster-wide one."""

    per_minute: int  # the key's limit, for /metrics

    async def acquire(self, deadline: float) -> None:
        """Wait for a slot until `deadline` (loop time); UpstreamUnavailable if none by
        then."""

    def wait_estimate(self) -> float:
        """Seconds until a slot is likely free (for `Retry-After`)."""


class ProviderRest(Protocol):
    """A provider's REST client, as the rest of the gateway uses it. Every call ends by
    `deadline` (loop time), spends the key's `budget`, and answers or raises
    `UpstreamUnavailable`."""

    state: RestState  # for /health and /metrics, and the mirror's choice of status
    calls: int  # calls tried, for /health and /metrics
    budget: CallBudget

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        """The symbol's quote, or None: the upstream has none for it."""
        ...

    async def market_status(self, exchange: str, deadline: float) -> MarketStatus: ...

    async def forward(self, path: str, params: Params, deadline: float) -> RestAnswer:
        """A call passed on for the REST mirror (Finnhub's paths, which a provider
        without them refuses with `UpstreamUnavailable`)."""
        ...
