"""Scale-out over Redis: any number of gateway processes, exactly one Finnhub socket.

With `REDIS_URL` set, every process runs a `Cluster` instead of feeding its hub
directly:

- **Interest.** The process's hub keeps the symbols its clients want in a
  `SymbolInterest`, which this module follows and publishes as the set
  `{prefix}:interest:{node}`; it expires unless refreshed, so a crashed process's
  symbols are released by themselves.
- **Leadership.** A lease, `SET {prefix}:leader {node} NX PX lease`, renewed every
  third of the lease and released on a clean exit. The holder runs the `FinnhubFeed`,
  whose own `SymbolInterest` it keeps equal to the union of every process's interest.
- **Trades.** The leader encodes each `price_update` once and publishes it on
  `{prefix}:trades:{symbol}` (and keeps it in `{prefix}:last:{symbol}` for snapshots);
  upstream state and refusals go out on `{prefix}:status` and `{prefix}:refused`, the
  market status the leader polls on `{prefix}:market` (cluster_publish.py). Every
  process, the leader included, subscribes only to its own clients' symbols and
  publishes what arrives into its own hub, as the feed would in a single process.
- **Bars.** The leader aggregates, stores and publishes bars; every process mirrors
  them for its clients (cluster_bars.py).
- **REST.** The key's REST budget and the quote cache are shared through Redis
  (cluster_rest.py); quotes any process fetched are announced on `{prefix}:quotes` and
  remembered by every process.

When Redis is unreachable, clients stay connected, `/health` says `"cluster":
"degraded"`, and every loop retries until Redis returns; a leader that cannot renew its
lease stops its feed before the lease can pass to anybody else. A duty that crashes
(a bug, not Redis) is restarted with a doubling delay, and so is leadership after a
leader's duty crashed (each leadership opens an upstream socket, and Finnhub allows one
per key); while either crash-loops, `failing` names it and `/health` answers 503.

This module must never publish or store the API key, and never talks to clients.
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
import redis.asyncio as redis
from redis.exceptions import RedisError

import protocol
from cluster.bars import LeaderBars, MirrorBars
from cluster.publish import UpstreamPublisher
from cluster.rest import decode_announcement
from finnhub_feed import FinnhubFeed
from hub import Hub, Update, UpdateBatch
from market_data.market_watch import MarketWatch
from market_data.model import MarketStatus, SymbolInterest
from market_data.quotes import QuoteService
from protocol import UPSTREAM_STATES, UpstreamState
from runtime.cancellation import raise_if_cancelling
from runtime.logs import get_logger
from runtime.supervisor import Restarts

logger = get_logger(__name__)

RETRY_SECONDS = 0.5
CRASH_MAX_DELAY = 30.0  # the longest wait before a crashed duty or leadership runs again
ALIVE = b""  # marker member of every interest set; never a symbol
VIEW_SECONDS = 0.5  # how often the cluster-wide view (holder, union) is refreshed

# Renew or release the lease only if this node still holds it.
RENEW_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class Cluster:
    """This process's part in the cluster. `interest` is the local hub's; `feed` is run
    only while this process leads, following the cluster-wide union."""

    def __init__(
        self,
        redis_url: str,
        interest: SymbolInterest,
        feed: FinnhubFeed,
        *,
        prefix: str = "stockgw",
        lease_seconds: float = 5.0,
    ) -> None:
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.interest = interest
        self.role = "follower"
        self.lease_holder: str | None = None
        self.cluster_symbols: set[str] = set()
        self.nodes = 0
        self.degraded = False
        self._redis_url = redis_url
        self._redis: redis.Redis = self._connect()
        self._redis_closed = False
        self._feed = feed
        self._prefix = prefix
        self._lease_ms = int(lease_seconds * 1000)
        self._hub: Hub | None = None
        self.quotes: QuoteService | None = None  # remembers every quote announced
        self.market: MarketWatch | None = None  # polled by the leader only
        self.bars: MirrorBars | None = None  # this process's copy of the cluster's bars
        self.bar_history, self.bar_grace = 240, 0.5  # the leader's aggregation
        self._restarts: dict[str, Restarts] = {}  # duty -> its crashes in a row

    @property
    def failing(self) -> dict[str, str]:
        """Duties crash-looping (`cluster.<duty>` -> what ended them), for `/health`."""
        return {f"cluster.{name}": r.reason for name, r in self._restarts.items() if r.looping}

    # -- keys --------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    key = _key  # for the shared REST budget and quote cache (cluster_rest.py)

    def client(self) -> redis.Redis:
        """The current Redis connection (remade when the cluster restarts)."""
        return self._redis

    @property
    def _interest_key(self) -> str:
        return self._key("interest", self.node)

    def _connect(self) -> redis.Redis:
        return redis.from_url(
            self._redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=False
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, hub: Hub) -> None:
        """Run every cluster duty until cancelled; then leave the cluster cleanly (so a
        supervisor may run it again)."""
        self._hub = hub
        if self._redis_closed:  # restarted after a crash: _leave() closed the old client
            self._redis, self._redis_closed = self._connect(), False
        try:
            async with asyncio.TaskGroup() as duties:
                duties.create_task(self._retrying("interest", self._publish_interest))
                duties.create_task(self._retrying("relay", self._relay))
                duties.create_task(self._retrying("view", self._watch_cluster))
                duties.create_task(self._retrying("leadership", self._lead_when_possible))
        finally:
            await self._leave()

    async def _leave(self) -> None:
        try:
            async with asyncio.timeout(2):
                try:
                    await self._redis.eval(RELEASE_LEASE, 1, self._key("leader"), self.node)
                    await self._redis.delete(self._interest_key)
                    await self._redis.publish(self._key("interest-changed"), self.node)
                finally:
                    self._redis_closed = True
                    await self._redis.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("cluster could not leave cleanly error=%s", type(exc).__name__)

    async def _retrying(self, name: str, duty: Callable[[], Awaitable[None]]) -> None:
        """Run a duty forever, through Redis outages, marking the cluster degraded."""
        restarts = self._restarts.setdefault(name, Restarts())
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
                delay = max(restarts.delay(RETRY_SECONDS, CRASH_MAX_DELAY), RETRY_SECONDS)
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

    # -- this process's interest -------------------------------------------------------------

    async def _publish_interest(self) -> None:
        """Keep `{prefix}:interest:{node}` equal to this process's symbols, and alive."""
        refresh = self._lease_ms / 3000
        while True:
            raise_if_cancelling()
            symbols = sorted(self.interest.symbols)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._interest_key)
                pipe.sadd(self._interest_key, ALIVE)  # the key exists even with no symbols
                if symbols:
                    pipe.sadd(self._interest_key, *[symbol.encode() for symbol in symbols])
                pipe.pexpire(self._interest_key, self._lease_ms)
                pipe.publish(self._key("interest-changed"), self.node)
                await pipe.execute()
            try:
                async with asyncio.timeout(refresh):
                    await self.interest.wait_changed()
            except TimeoutError as timeout:
                raise_if_cancelling(timeout)

    async def _watch_cluster(self) -> None:
        """The cluster-wide view: who leads, how many nodes, the union of interest."""
        while True:
            raise_if_cancelling()
            holder = await self._redis.get(self._key("leader"))
            self.lease_holder = _text(holder) if holder else None
            keys = [key async for key in self._redis.scan_iter(self._key("interest", "*"))]
            members = await self._redis.sunion(keys) if keys else set()
            self.nodes = len(keys)
            self.cluster_symbols = {_text(member) for member in members if member != ALIVE}
            self.degraded = False
            if self.role == "leader":
                self._feed.interest.replace(self.cluster_symbols)
            await asyncio.sleep(VIEW_SECONDS)

    # -- the trades relay (every process) ------------------------------------------------------

    async def _relay(self) -> None:
        """Subscribe to this process's symbols and publish what arrives into the local hub."""
        hub = self._hub
        assert hub is not None
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(
                self._key("status"),
                self._key("refused"),
                self._key("market"),
                self._key("quotes"),
                self._key("bars"),
            )
            state = await self._redis.get(self._key("upstream"))
            if state and _text(state) in UPSTREAM_STATES:
                hub.upstream_state_changed(cast(UpstreamState, _text(state)))
            market = await self._redis.get(self._key("market"))
            if market:
                hub.market_changed(MarketStatus(**orjson.loads(market)))
            subscribed: set[str] = set()
            prefix = self._key("trades", "")
            while True:
                raise_if_cancelling()
                wanted = set(self.interest.symbols)
                if wanted != subscribed:
                    added, removed = wanted - subscribed, subscribed - wanted
                    if added:
                        await pubsub.subscribe(*[prefix + symbol for symbol in added])
                        await self._seed_snapshots(hub, added)
                        if self.bars is not None:
                            await self.bars.load(added)
                    if removed:
                        await pubsub.unsubscribe(*[prefix + symbol for symbol in removed])
                        if self.bars is not None:
                            self.bars.forget(removed)
                    subscribed = wanted
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None:
                    await self._deliver(hub, _text(message["channel"]), message["data"], prefix)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _seed_snapshots(self, hub: Hub, symbols: set[str]) -> None:
        ordered = sorted(symbols)
        payloads = await self._redis.mget([self._key("last", symbol) for symbol in ordered])
        snapshots = [
            Update(symbol, protocol.Frame(_bytes(payload)))
            for symbol, payload in zip(ordered, payloads, strict=True)
            if payload
        ]
        if snapshots:
            await hub.publish(UpdateBatch(snapshots, time.perf_counter(), live=False))

    async def _deliver(self, hub: Hub, channel: str, data: bytes, trades_prefix: str) -> None:
        if channel.startswith(trades_prefix):
            update = Update(channel[len(trades_prefix) :], protocol.Frame(data))
            await hub.publish(UpdateBatch([update], time.perf_counter()))
        elif channel == self._key("status"):
            state = data.decode()
            if state in UPSTREAM_STATES:
                hub.upstream_state_changed(state)
        elif channel == self._key("bars"):
            if self.bars is not None:
                self.bars.received(data)
        elif channel == self._key("market"):
            hub.market_changed(MarketStatus(**orjson.loads(data)))
        elif channel == self._key("quotes"):
            if self.quotes is not None:
                self.quotes.remember(*decode_announcement(data))
        elif channel == self._key("refused"):
            refusal: dict[str, Any] = orjson.loads(data)
            symbol = refusal.get("symbol")
            hub.upstream_refused(symbol if isinstance(symbol, str) else None)

    # -- leadership --------------------------------------------------------------------------

    async def _lead_when_possible(self) -> None:
        restarts = self._restarts.setdefault("leadership", Restarts())
        restarts.started()
        while True:
            raise_if_cancelling()
            wait = self._lease_ms / 3000
            won = await self._redis.set(self._key("leader"), self.node, nx=True, px=self._lease_ms)
            if won:
                logger.warning("cluster leadership taken node=%s", self.node)
                crashed = await self._lead()
                logger.warning("cluster leadership lost node=%s", self.node)
                if crashed is not None:
                    # Not at once again: every leadership opens an upstream socket.
                    restarts.crashed(crashed)
                    wait = max(wait, restarts.delay(RETRY_SECONDS, CRASH_MAX_DELAY))
                    logger.warning("cluster leadership paused seconds=%.1f in_a_row=%d",
                                   wait, restarts.in_a_row)  # fmt: skip
                    await asyncio.sleep(wait)
                    restarts.started()
                    continue
            await asyncio.sleep(wait)

    async def _lead(self) -> str | None:
        """Run the feed for as long as the lease can be renewed; what ended a duty
        that crashed (or returned), None when the lease ended the leadership."""
        self.role = "leader"
        self._feed.interest.replace(self.cluster_symbols)
        previous_close = self.quotes.previous_close if self.quotes is not None else _unknown
        bars = None
        if self.bars is not None:
            bars = LeaderBars(
                self.bars.stored,  # one count of malformed stored bars per process
                lambda: self._feed.interest.symbols,  # what the feed carries: what trades
                history=self.bar_history,
                grace=self.bar_grace,
            )
        publisher = UpstreamPublisher(
            self._redis, self._key, previous_close, bars.trades_received if bars else None
        )
        duties = [
            asyncio.create_task(self._feed.run(publisher), name="cluster-feed"),
            asyncio.create_task(publisher.forward_events(), name="cluster-events"),
        ]
        if bars is not None:
            duties.append(asyncio.create_task(bars.run(), name="cluster-bars"))
        if self.market is not None:  # one poll of the market status for the whole cluster
            self.market.on_change, self.market.status = publisher.market_changed, None
            duties.append(asyncio.create_task(self.market.run(), name="cluster-market"))
        renewing = asyncio.create_task(self._keep_lease(), name="cluster-lease")
        crashed: str | None = None
        try:
            # Lead while the lease holds and every duty runs: a duty that ends (a crash)
            # gives the lease up, so a healthy process can take over.
            done, _ = await asyncio.wait([renewing, *duties], return_when=asyncio.FIRST_COMPLETED)
            for ended in done - {renewing}:
                error = None if ended.cancelled() else ended.exception()
                crashed = type(error).__name__ if error is not None else "returned"
                if error is not None:
                    logger.error(
                        "cluster leader duty crashed duty=%s; giving up the lease",
                        ended.get_name(),
                        exc_info=ended.exception(),
                    )
        finally:
            # Stop the feed before anyone else can hold the lease.
            self.role = "follower"
            for task in (renewing, *duties):
                task.cancel()
            _, stuck = await asyncio.wait([renewing, *duties], timeout=5)
            if stuck:
                logger.error("cluster feed did not stop within 5 s tasks=%d", len(stuck))
        if not renewing.cancelled() and renewing.done() and renewing.exception() is None:
            return crashed  # the lease was lost
        await self._redis.eval(RELEASE_LEASE, 1, self._key("leader"), self.node)
        return crashed

    async def _keep_lease(self) -> None:
        while await self._renew_lease():
            raise_if_cancelling()

    async def _renew_lease(self) -> bool:
        """Wait a third of the lease, then extend it; False once it cannot be proven ours."""
        await asyncio.sleep(self._lease_ms / 3000)
        try:
            renewed = await self._redis.eval(
                RENEW_LEASE, 1, self._key("leader"), self.node, str(self._lease_ms)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            return False
        return bool(renewed)


def _unknown(symbol: str) -> float | None:
    return None
