"""What a cluster's leader publishes through Redis: everything its feed learns (trades,
encoded once with the day's change; upstream state; refusals) and the market status it
polls. Every process, the leader included, receives them through its relay
(cluster/redis_relay.py). The last upstream state and market status are also kept in Redis,
for processes that start later. This module never publishes or stores the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from redis.exceptions import RedisError

from stock_gateway import protocol
from stock_gateway.cluster.bars import LeaderBars
from stock_gateway.cluster.link import RedisLink
from stock_gateway.market_data.model import MarketStatus, Trade, UpstreamState
from stock_gateway.market_data.trade_wire import encode_trade_message
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)


class UpstreamPublisher:
    """The leader feed's listener (and its market watch's): out through Redis."""

    def __init__(
        self,
        link: RedisLink,
        previous_close: Callable[[str], float | None] | None,
        bars: LeaderBars | None = None,
        feed_of: Callable[[str], str] = lambda symbol: "live",
    ) -> None:
        self._redis = link.client()
        self._feed_of = feed_of  # the leader's plan: every node's clients see its feeds
        self._key = link.key
        self._previous_close = previous_close
        self._bars = bars  # the leader's bar aggregation (cluster/bars.py)
        self._events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def trades_received(self, trades: list[Trade], received_at: float) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for frame in protocol.encode_trades(trades, self._previous_close, self._feed_of):
                    pipe.publish(self._key("trades", frame.symbol), frame.payload)  # encoded once
                    pipe.set(self._key("last", frame.symbol), frame.payload, ex=86_400)
                # The message's trades as Finnhub sent them, for clients of its dialect.
                pipe.publish(self._key("ticks"), encode_trade_message(trades))
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            logger.warning("cluster dropped %d trades error=%s", len(trades), type(exc).__name__)
        if self._bars is not None:
            try:
                await self._bars.trades_received(trades)
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                logger.warning("cluster bars missed %d trades error=%s", len(trades),
                               type(exc).__name__)  # fmt: skip

    def upstream_state_changed(self, state: UpstreamState) -> None:
        if self._bars is not None:  # bars overlapping a time it was down say so
            self._bars.upstream_state_changed(state)
        self._events.put_nowait(("status", state.encode()))

    def upstream_refused(self, symbol: str | None) -> None:
        self._events.put_nowait(("refused", orjson.dumps({"symbol": symbol})))

    def market_changed(self, status: MarketStatus) -> None:
        self._events.put_nowait(("market", orjson.dumps(status.as_dict())))

    async def forward_events(self) -> None:
        """Publish state, refusals and market status in order; the last state and market
        status are also kept, for processes that start later."""
        while True:
            channel, payload = await self._events.get()
            try:
                if channel in ("status", "market"):
                    await self._redis.set(
                        self._key("upstream" if channel == "status" else "market"), payload
                    )
                await self._redis.publish(self._key(channel), payload)
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                logger.warning("cluster dropped a %s event error=%s", channel, type(exc).__name__)
