"""The market's session (open or closed, pre-market, regular, post-market, holiday),
polled from the provider (Finnhub's `/stock/market-status`) at a modest interval within the REST
budget, and announced to the hub whenever it changes.

In a single process `MarketWatch.run()` polls; in a cluster only the leader polls and
the others learn the status through Redis (cluster/leader.py), so one key pays for one poll.
This module never talks to clients itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from stock_gateway.market_data.model import MarketStatus
from stock_gateway.market_data.provider import UpstreamUnavailable
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)


class StatusSource(Protocol):
    async def market_status(self, exchange: str, deadline: float) -> MarketStatus: ...


class MarketWatch:
    def __init__(
        self,
        source: StatusSource,
        on_change: Callable[[MarketStatus], None],
        *,
        exchange: str = "US",
        interval: float = 120.0,
    ) -> None:
        self.status: MarketStatus | None = None
        self._source = source
        self.on_change = on_change  # the hub; in a cluster, the leader's publisher
        self._exchange = exchange
        self._interval = interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                deadline = loop.time() + self._interval
                self.changed(await self._source.market_status(self._exchange, deadline))
            except UpstreamUnavailable as exc:
                logger.info("market status unavailable reason=%s", exc)
            await asyncio.sleep(self._interval)

    def changed(self, status: MarketStatus) -> None:
        """A status polled here or learned from the cluster's leader."""
        if status != self.status:
            logger.info("market status exchange=%s session=%s", status.exchange, status.session)
            self.status = status
            self.on_change(status)
