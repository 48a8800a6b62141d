"""`RedisRelay`: any number of gateway processes, exactly one Finnhub socket.

With `REDIS_URL` set, `wiring.py` builds this relay instead of the local one. Its
duties, run under one supervised task (`cluster`), each retried through Redis outages:

- **interest** and **view** (cluster/membership.py): this process's symbols in Redis,
  and who leads, how many nodes, the union of every node's interest, re-read at once
  when any node announces a change (so a follower's subscribe reaches Finnhub within
  milliseconds); the leader's upstream follows the union.
- **leadership** (cluster/leader.py): the lease, and while it holds, the upstream, the
  publisher, the bar aggregation (and the bar store's writes) and the market watch.
- **relay**: subscribes to the trades of this process's symbols (published encoded,
  once, by the leader on `{prefix}:trades:{symbol}`, the last kept in
  `{prefix}:last:{symbol}` for snapshots) and to status, refusals, market status,
  quotes and bars, and publishes what arrives into the local hub, as the feed would
  in a single process.
- **feeds** (cluster/feeds.py): every node's demand shared, the leader's feeds and
  polled quotes told to this process's clients.

When Redis is unreachable, clients stay connected, `/health` says `"cluster":
"degraded"`, and every duty retries until Redis returns. This module never publishes
or stores the API key, and never talks to clients except through the hub.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from hub import Hub, UpdateBatch
from stock_gateway import protocol
from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.cluster.bars import MirrorBars
from stock_gateway.cluster.feeds import ClusterFeeds
from stock_gateway.cluster.leader import Leadership, MarketWatchFactory
from stock_gateway.cluster.link import RedisLink, as_bytes, text
from stock_gateway.cluster.membership import Membership
from stock_gateway.cluster.rest import decode_announcement
from stock_gateway.cluster.stored_bars import StoredBars
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.market_data.model import UPSTREAM_STATES, MarketStatus, UpstreamState
from stock_gateway.market_data.quotes import QuoteService
from stock_gateway.market_data.trade_wire import UndecodableMessage, decode, parse_trades
from stock_gateway.market_data.upstream import Upstream
from stock_gateway.relay.base import ClusterView, Duty
from stock_gateway.runtime.backoff import Backoff
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.supervisor import Restarts

logger = get_logger(__name__)

RETRY_SECONDS = 0.5
CRASH_MAX_DELAY = 30.0  # the longest pause before a crashed duty or leadership runs again


class RedisRelay:
    """This process's part in the cluster: `hub` is fed from Redis; `upstream` runs only
    while this process leads, following the cluster-wide union."""

    def __init__(
        self,
        link: RedisLink,
        upstream: Upstream,
        hub: Hub,
        feeds: ClusterFeeds,
        *,
        lease_seconds: float,
        quotes: QuoteService | None,
        market_watch: MarketWatchFactory | None,
        bars: BarDelivery | None,
        bar_mirror: MirrorBars | None,
        stored_bars: StoredBars | None,
        recorder: BarRecorder | None,
        bar_history: int,
        bar_grace: float,
    ) -> None:
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.interest = hub.interest  # this process's clients' symbols
        self.degraded = False
        self._link = link
        self._hub = hub
        self._lease_ms = int(lease_seconds * 1000)
        self._quotes = quotes  # remembers every quote announced
        self._bars = bars
        self._bar_mirror = bar_mirror  # this process's copy of the cluster's bars
        self._stored_bars = stored_bars  # the cluster's bars in Redis (the leader writes)
        self._feeds = feeds
        self.membership = Membership(link, self.node, self.interest, self._lease_ms, self._viewed)
        # Each duty's crashes in a row (not Redis outages: those are `degraded`).
        self._restarts = {
            name: Restarts(Backoff(RETRY_SECONDS, CRASH_MAX_DELAY, floor=0.5))
            for name in ("interest", "relay", "view", "leadership", "feeds")
        }
        self.leadership = Leadership(
            link,
            self.node,
            upstream,
            feeds,
            lambda: self.membership.symbols,
            lease_seconds=lease_seconds,
            previous_close=quotes.previous_close if quotes is not None else None,
            stored_bars=stored_bars,
            recorder=recorder,
            bar_history=bar_history,
            bar_grace=bar_grace,
            market_watch=market_watch,
            restarts=self._restarts["leadership"],
        )

    @property
    def role(self) -> str:
        return self.leadership.role

    def duties(self) -> dict[str, Duty]:
        return {"cluster": self.run}

    def cluster_view(self) -> ClusterView:
        view = self.membership
        return ClusterView(
            self.node,
            self.role,
            view.lease_holder,
            view.nodes,
            len(view.symbols),
            self.degraded,
            self._stored_bars.skipped if self._stored_bars is not None else 0,
        )

    def failing(self) -> dict[str, str]:
        """Duties crash-looping (`cluster.<duty>` -> what ended them), for `/health`."""
        return {f"cluster.{name}": r.reason for name, r in self._restarts.items() if r.looping}

    def _viewed(self, cluster_symbols: set[str]) -> None:
        self.degraded = False  # Redis answered
        self.leadership.follow(cluster_symbols)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every cluster duty until cancelled; then leave the cluster cleanly (so a
        supervisor may run it again)."""
        self._link.reconnect()  # restarted after a crash: _leave() closed the old client
        try:
            async with asyncio.TaskGroup() as duties:
                duties.create_task(self._retrying("interest", self.membership.publish_interest))
                duties.create_task(self._retrying("relay", self._relay))
                duties.create_task(self._retrying("view", self.membership.watch))
                duties.create_task(self._retrying("leadership", self.leadership.run))
                duties.create_task(self._retrying("feeds", self._feeds.run))
        finally:
            await self._leave()

    async def _leave(self) -> None:
        redis = self._link.client()
        try:
            async with asyncio.timeout(2):
                try:
                    await self.leadership.release()
                    await redis.delete(self.membership.interest_key)
                    await redis.publish(self._link.key("interest-changed"), self.node)
                finally:
                    await self._link.close()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("cluster could not leave cleanly error=%s", type(exc).__name__)

    async def _retrying(self, name: str, duty: Callable[[], Awaitable[None]]) -> None:
        """Run a duty forever, through Redis outages (marking the cluster degraded) and
        crashes (after a doubling pause: a bug is not retried at full speed)."""
        restarts = self._restarts[name]
        while True:
            delay = RETRY_SECONDS
            restarts.started()
            try:
                await duty()
            except (RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelling(exc)
                if not self.degraded:
                    logger.warning("cluster degraded duty=%s error=%s", name, type(exc).__name__)
                self.degraded = True
            except Exception as exc:  # a duty must outlive any surprise
                raise_if_cancelling(exc)
                restarts.crashed(type(exc).__name__)
                delay = max(restarts.delay(), RETRY_SECONDS)
                logger.exception("cluster duty crashed duty=%s in_a_row=%d; restarting it",
                                 name, restarts.in_a_row)  # fmt: skip
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being stopped
                # Nobody asked to cancel this task: a client library leaked a cancellation
                # while its connection was torn down. Keep the duty alive.
                logger.warning("cluster duty interrupted duty=%s; restarting it", name)
            await asyncio.sleep(delay)

    # -- the relay into this process's hub ---------------------------------------------------

    async def _relay(self) -> None:
        """Subscribe to this process's symbols and publish what arrives into the local hub."""
        hub, key = self._hub, self._link.key
        redis = self._link.client()
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(
                key("status"),
                key("refused"),
                key("market"),
                key("quotes"),
                key("bars"),
                key("interest-changed"),
                key("ticks"),
            )
            state = await redis.get(key("upstream"))
            if state and text(state) in UPSTREAM_STATES:
                hub.upstream_state_changed(cast(UpstreamState, text(state)))
            market = await redis.get(key("market"))
            if market:
                hub.market_changed(MarketStatus(**orjson.loads(market)))
            subscribed: set[str] = set()
            prefix = key("trades", "")
            while True:
                raise_if_cancelling()
                wanted = set(self.interest.symbols)
                if wanted != subscribed:
                    added, removed = wanted - subscribed, subscribed - wanted
                    if added:
                        await pubsub.subscribe(*[prefix + symbol for symbol in added])
                        await self._seed_snapshots(added)
                        if self._bar_mirror is not None:
                            await self._bar_mirror.load(added)
                    if removed:
                        await pubsub.unsubscribe(*[prefix + symbol for symbol in removed])
                        if self._bar_mirror is not None:
                            self._bar_mirror.forget(removed)
                    subscribed = wanted
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None:
                    await self._deliver(text(message["channel"]), message["data"], prefix)
        finally:
            await pubsub.aclose()

    async def _relay_trades(self, data: bytes) -> None:
        """A leader's upstream message, as Finnhub sent it: read like any upstream data
        (checked trade by trade), this process's symbols to the hub. Not encoded once:
        the leader re-encodes the trades it parsed (cluster/publish.py), each follower
        decodes them here, and its trade groups encode them again per group (their
        frames depend on this process's clients), so Redis carries only Finnhub's own
        shape and a follower never trusts the leader's bytes more than Finnhub's."""
        try:
            message = decode(data.decode())
        except (UndecodableMessage, UnicodeDecodeError):
            return
        trades, _ = parse_trades(message.get("data") if isinstance(message, dict) else None)
        wanted = self.interest
        trades = [trade for trade in trades if trade.symbol in wanted]
        if trades:
            await self._hub.publish(UpdateBatch([], time.perf_counter(), trades=trades))

    async def _seed_snapshots(self, symbols: set[str]) -> None:
        ordered = sorted(symbols)
        keys = [self._link.key("last", symbol) for symbol in ordered]
        payloads = await self._link.client().mget(keys)
        snapshots = [
            protocol.price_update_frame(symbol, as_bytes(payload))
            for symbol, payload in zip(ordered, payloads, strict=True)
            if payload
        ]
        if snapshots:
            await self._hub.publish(UpdateBatch(snapshots, time.perf_counter(), live=False))

    async def _deliver(self, channel: str, data: bytes, trades_prefix: str) -> None:
        hub, key = self._hub, self._link.key
        if channel.startswith(trades_prefix):
            update = protocol.price_update_frame(channel[len(trades_prefix) :], data)
            await hub.publish(UpdateBatch([update], time.perf_counter()))
        elif channel == key("interest-changed"):
            self.membership.stale.set()
        elif channel == key("ticks"):
            if hub.trades:  # read only while a client here follows raw trades
                await self._relay_trades(data)
        elif channel == key("status"):
            state = data.decode()
            if state in UPSTREAM_STATES:
                hub.upstream_state_changed(state)
        elif channel == key("bars"):
            if self._bar_mirror is not None and self._bars is not None:
                self._bars.deliver(self._bar_mirror.received(data))
        elif channel == key("market"):
            hub.market_changed(MarketStatus(**orjson.loads(data)))
        elif channel == key("quotes"):
            if self._quotes is not None:
                self._quotes.remember(*decode_announcement(data))
        elif channel == key("refused"):
            refusal: dict[str, Any] = orjson.loads(data)
            symbol = refusal.get("symbol")
            hub.upstream_refused(symbol if isinstance(symbol, str) else None)
