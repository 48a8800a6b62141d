"""One plan per key on a cluster: the leader's feeds and polled quotes reach every node.

Only the leader runs the feed planner (market_data/planned_upstream.py, over the
cluster's union of wanted symbols), so `ClusterFeeds` carries its plan to every node:

- **demand**: each node keeps its clients' demand per symbol (owner-weighted:
  access/capacity.py) in the hash `{prefix}:demand:{id}`, which expires unless
  refreshed, and sums every node's into `demand()`: what the planner plans from while
  this node leads. An owner with clients on several nodes counts once per node.
- **feeds**: after every plan the leader (`lead()`) compares the plan with the map the
  cluster was last told and publishes the difference, encoded once, on
  `{prefix}:feeds` (symbol -> feed, null once no longer planned), keeping the whole map
  in the hash `{prefix}:feed-map`. A new leader starts from that hash (the old leader's
  map), so clients hear only what its plan changes.
- **polled quotes**: each quote the leader's poller fetched, published once on
  `{prefix}:polled`.

Every node, the leader included, reads the map when it joins (and after any Redis
outage), applies what is published, and tells its own clients who hold a symbol when
its feed changes and a polled quote of it (delivery/feed_notices.py), which read this
node's `FeedMap` to tell a client joining a symbol that is not live its feed. This
module never talks to clients except through the notices, and never publishes the key.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable, Mapping

import orjson
from redis.exceptions import RedisError

from stock_gateway.cluster.link import RedisLink, text
from stock_gateway.cluster.rest import decode_announcement, encode_quote
from stock_gateway.delivery.feed_notices import FeedNotices
from stock_gateway.market_data.feed_plan import FEEDS, unplanned_feed
from stock_gateway.market_data.model import Quote
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

DEMAND_SECONDS = 0.5  # how often a node's demand is shared and the cluster's summed
POLLED_QUEUE = 256  # polled quotes waiting to be published (the poller makes ~1 a second)

FeedChanges = Mapping[str, str | None]  # symbol -> its feed, None: no longer planned


class FeedMap:
    """The cluster's feed of each planned symbol, as this node last learned it."""

    def __init__(self) -> None:
        self._feeds: dict[str, str] = {}
        self._past_socket = 0  # planned symbols not live: the socket is full

    def feed_of(self, symbol: str) -> str:
        return self._feeds.get(symbol, unplanned_feed(self.rotating))

    @property
    def rotating(self) -> bool:
        return self._past_socket > 0

    def feeds(self) -> dict[str, str]:
        return dict(self._feeds)

    def apply(self, changes: FeedChanges) -> dict[str, str]:
        """Take these changes; return the symbols whose clients are to be told. A
        symbol first planned is told unless it is live while nothing was past the
        socket: its clients joined on this node before or after another change filled
        the socket (told nothing, so live; or told "sampled"), so a repeat is the safe
        side."""
        told: dict[str, str] = {}
        rotating = self.rotating  # as at the batch's start
        for symbol, feed in changes.items():
            before = self._feeds.get(symbol)
            self._past_socket -= before is not None and before != "live"
            if feed is None:
                self._feeds.pop(symbol, None)
                continue
            self._feeds[symbol] = feed
            self._past_socket += feed != "live"
            if feed != before if before is not None else (feed != "live" or rotating):
                told[symbol] = feed
        return told

    def replace(self, feeds: Mapping[str, str]) -> dict[str, str]:
        """The whole map anew (read from Redis): what changed, as `apply`."""
        gone: dict[str, str | None] = {s: None for s in self._feeds if s not in feeds}
        return self.apply(gone | dict(feeds))


class ClusterFeeds:
    def __init__(
        self,
        link: RedisLink,
        notices: FeedNotices,
        feed_map: FeedMap,
        local_demand: Callable[[], Mapping[str, float]],
        plan: Callable[[], Mapping[str, str]],
        *,
        demand_seconds: float = DEMAND_SECONDS,
        lease_seconds: float = 5.0,
    ) -> None:
        self.map = feed_map  # the notices read it too: a client joining is told its feed
        self._link = link
        self._notices = notices
        self._local_demand = local_demand
        self._plan = plan  # the planner's feeds: what the leader publishes
        self._demand: dict[str, float] = {}
        self._demand_key = link.key("demand", uuid.uuid4().hex[:12])
        self._demand_seconds = demand_seconds
        self._demand_ms = int(max(lease_seconds, 3 * demand_seconds) * 1000)
        self._planned = asyncio.Event()
        self._polled: deque[bytes] = deque(maxlen=POLLED_QUEUE)
        self._leading = False

    # -- what the planner and the poller call (only the leader's ever run) -------------

    def demand(self) -> dict[str, float]:
        """Every node's clients' demand per symbol, summed."""
        return self._demand

    def planned(self, changes: Mapping[str, str]) -> None:
        """The planner planned (changes or none): the published map is brought level."""
        self._planned.set()

    def polled(self, symbol: str, quote: Quote) -> None:
        if self._leading:  # a past leader's last polls are not the cluster's plan
            self._polled.append(encode_quote(symbol, quote))
            self._planned.set()

    # -- every node --------------------------------------------------------------------

    async def run(self) -> None:
        """Share this node's demand, follow the cluster's; and tell this node's clients
        of the leader's feeds and polled quotes."""
        async with asyncio.TaskGroup() as duties:
            duties.create_task(self._share_demand())
            duties.create_task(self._listen())

    async def _share_demand(self) -> None:
        redis, key = self._link.client, self._demand_key
        while True:
            raise_if_cancelling()
            mine = {symbol: repr(weight) for symbol, weight in self._local_demand().items()}
            async with redis().pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if mine:
                    pipe.hset(key, mapping=mine)  # type: ignore[arg-type]
                pipe.pexpire(key, self._demand_ms)
                await pipe.execute()
            keys = [k async for k in redis().scan_iter(self._link.key("demand", "*"))]
            async with redis().pipeline(transaction=False) as pipe:
                for each in keys:
                    pipe.hgetall(each)
                shares: list[dict[bytes, bytes]] = await pipe.execute()
            summed: dict[str, float] = {}
            for share in shares:
                for symbol, weight in share.items():
                    try:
                        summed[text(symbol)] = summed.get(text(symbol), 0.0) + float(weight)
                    except ValueError:
                        continue  # not a number: another version's, or damaged
            self._demand = summed
            await asyncio.sleep(self._demand_seconds)

    async def _listen(self) -> None:
        redis, key = self._link.client(), self._link.key
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(key("feeds"), key("polled"))
            stored = await redis.hgetall(key("feed-map"))
            self._tell(self.map.replace({text(s): text(f) for s, f in stored.items()}))
            while True:
                raise_if_cancelling()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None:
                    self._received(text(message["channel"]), message["data"])
        finally:
            await pubsub.aclose()

    def _received(self, channel: str, data: bytes) -> None:
        try:
            if channel == self._link.key("feeds"):
                self._tell(self.map.apply(_changes(orjson.loads(data))))
            elif channel == self._link.key("polled"):
                symbol, quote = decode_announcement(data)
                if quote is not None:
                    self._notices.polled(symbol, quote)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("cluster skipped an unreadable %s message error=%s",
                           channel, type(exc).__name__)  # fmt: skip

    def _tell(self, changes: Mapping[str, str]) -> None:
        if changes:
            self._notices.feeds_changed(changes)

    # -- the leader ----------------------------------------------------------------------

    async def lead(self) -> None:
        """While leading: after every plan, publish what changed of the cluster's map,
        and every polled quote."""
        self._planned.clear()  # only this leadership's plans count
        redis, key = self._link.client(), self._link.key
        try:
            stored = await redis.hgetall(key("feed-map"))
            told = {text(symbol): text(feed) for symbol, feed in stored.items()}
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            told = self.map.feeds()  # what this node last heard
        self._leading = True
        try:
            while True:
                await self._planned.wait()
                self._planned.clear()
                told = await self._publish(told, dict(self._plan()))
        finally:
            self._leading = False
            self._polled.clear()

    async def _publish(self, told: dict[str, str], plan: dict[str, str]) -> dict[str, str]:
        """Publish the plan's difference from `told` and the polled quotes; return what
        the cluster has now been told (`told` again if Redis did not take it)."""
        changes: dict[str, str | None] = {s: f for s, f in plan.items() if told.get(s) != f}
        changes.update({symbol: None for symbol in told if symbol not in plan})
        polled = list(self._polled)
        self._polled.clear()
        if not changes and not polled:
            return told
        key = self._link.key
        try:
            async with self._link.client().pipeline(transaction=False) as pipe:
                if changes:
                    if gone := [symbol for symbol, feed in changes.items() if feed is None]:
                        pipe.hdel(key("feed-map"), *gone)
                    if kept := {s: f for s, f in changes.items() if f is not None}:
                        pipe.hset(key("feed-map"), mapping=kept)  # type: ignore[arg-type]
                    pipe.publish(key("feeds"), orjson.dumps(changes))  # encoded once
                for quote in polled:
                    pipe.publish(key("polled"), quote)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            logger.warning("cluster dropped %d feed changes and %d polled quotes error=%s",
                           len(changes), len(polled), type(exc).__name__)  # fmt: skip
            return told  # the changes are tried again after the next plan
        return plan


def _changes(body: object) -> dict[str, str | None]:
    if not isinstance(body, dict):
        raise TypeError("feed changes are a map")
    return {
        str(symbol): feed if feed in FEEDS else None
        for symbol, feed in body.items()
        if feed is None or feed in FEEDS
    }
