"""`LocalRelay`: one process, one upstream. The upstream's listener is this relay: each
upstream message's trades that are still carried count in the bars, become
`price_update` frames once (`protocol.encode_trades`), and go into the hub's queue;
state changes and refusals go to the hub as they come. Its duties: the upstream
connection (`feed`), the bar clock (`bars`) and the market watch (`market`).

This module never talks to clients except through the hub.
"""

from __future__ import annotations

from hub import Hub, UpdateBatch
from stock_gateway import protocol
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.market_data.market_watch import MarketWatch
from stock_gateway.market_data.model import Trade, UpstreamState
from stock_gateway.market_data.quotes import QuoteService
from stock_gateway.market_data.upstream import Upstream
from stock_gateway.relay.base import ClusterView, Duty


class LocalRelay:
    def __init__(
        self,
        upstream: Upstream,
        hub: Hub,
        *,
        bars: BarDelivery | None = None,
        quotes: QuoteService | None = None,
        market: MarketWatch | None = None,
    ) -> None:
        self._upstream = upstream
        self._hub = hub
        self._bars = bars
        self._previous_close = quotes.previous_close if quotes is not None else None
        self._market = market

    def duties(self) -> dict[str, Duty]:
        duties: dict[str, Duty] = {"feed": lambda: self._upstream.run(self)}
        if self._bars is not None:
            duties["bars"] = self._bars.run
        if self._market is not None:
            duties["market"] = self._market.run
        return duties

    def cluster_view(self) -> ClusterView | None:
        return None

    def failing(self) -> dict[str, str]:
        return {}  # every duty is a supervised core task of its own

    # -- the upstream's listener ------------------------------------------------------------

    async def trades_received(self, trades: list[Trade], received_at: float) -> None:
        carried = self._upstream.interest
        trades = [trade for trade in trades if trade.symbol in carried]  # else released
        if self._bars is not None:
            await self._bars.trades_received(trades)  # every trade counts in a bar
        updates = protocol.encode_trades(trades, self._previous_close, self._upstream.feed_of)
        if updates:
            await self._hub.publish(UpdateBatch(updates, received_at, trades=trades))

    def upstream_state_changed(self, state: UpstreamState) -> None:
        if self._bars is not None:
            self._bars.upstream_state_changed(state)
        self._hub.upstream_state_changed(state)

    def upstream_refused(self, symbol: str | None) -> None:
        self._hub.upstream_refused(symbol)
