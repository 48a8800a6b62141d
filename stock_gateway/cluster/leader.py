"""Leadership: exactly one process of the cluster holds the Finnhub socket.

The lease is `SET {prefix}:leader {node} NX PX lease`, renewed every third of the lease
by a check-and-extend script and released on a clean exit by a check-and-delete. While
it holds the lease, `Leadership` runs the upstream (following the cluster-wide union of
interest), an `UpstreamPublisher` as its listener (trades encoded once, out through
Redis), the feeds its planner plans and the quotes it polls, out to every node
(`ClusterFeeds.lead`), the bar aggregation (`LeaderBars`), with a bar store its writes
(`cluster-bar-store`: only the leader writes), and the market watch. When a leadership
ends, however it ends, what it recorded and has not written (open bars included) is
written at once, before the lease is released; what cannot be written in time is
dropped, since the next leader records again from Redis the closed bars the store
lacks. A duty that ends (a crash) gives the lease up, so a healthy process can take
over; a leader that cannot renew stops its upstream before the lease can pass to
anybody else. A leadership that ended in a crash waits a doubling pause before
competing again, so a crash-looping leader cannot open upstream sockets in a tight
loop; after three in a row `/health` names it (`cluster.leadership`).

This module never talks to clients and never publishes the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from redis.exceptions import RedisError

from stock_gateway.bars.recorder import BarRecorder
from stock_gateway.cluster.bars import LeaderBars
from stock_gateway.cluster.feeds import ClusterFeeds
from stock_gateway.cluster.link import RedisLink
from stock_gateway.cluster.publish import UpstreamPublisher
from stock_gateway.cluster.stored_bars import StoredBars
from stock_gateway.market_data.market_watch import MarketWatch
from stock_gateway.market_data.model import MarketStatus
from stock_gateway.market_data.upstream import Upstream
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.supervisor import Restarts

logger = get_logger(__name__)

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
STOP_WAIT_SECONDS = 5.0  # a leader's duties must stop within this before anyone else leads

MarketWatchFactory = Callable[[Callable[[MarketStatus], None]], MarketWatch]


class Leadership:
    def __init__(
        self,
        link: RedisLink,
        node: str,
        upstream: Upstream,
        feeds: ClusterFeeds,
        union: Callable[[], AbstractSet[str]],
        *,
        lease_seconds: float,
        previous_close: Callable[[str], float | None] | None,
        stored_bars: StoredBars | None,
        recorder: BarRecorder | None,
        bar_history: int,
        bar_grace: float,
        market_watch: MarketWatchFactory | None,
        restarts: Restarts,
    ) -> None:
        self.role = "follower"
        self._link = link
        self._node = node
        self._upstream = upstream
        self._feeds = feeds  # the plan and the polled quotes, out to every node
        self._union = union  # the cluster-wide interest, as the relay last saw it
        self._lease_ms = int(lease_seconds * 1000)
        self._previous_close = previous_close
        self._stored_bars = stored_bars
        self._recorder = recorder  # the bar store's writer, used only while leading
        self._bar_history, self._bar_grace = bar_history, bar_grace
        self._market_watch = market_watch
        # Leaderships that crashed in a row: each waits longer before competing again
        # (every leadership opens an upstream socket; Finnhub allows one per key).
        self._restarts = restarts

    def follow(self, symbols: AbstractSet[str]) -> None:
        """The cluster-wide interest changed: the upstream follows it while we lead."""
        if self.role == "leader":
            self._upstream.interest.replace(symbols)

    async def run(self) -> None:
        """Take the lease whenever it is free, and lead while it holds."""
        redis = self._link.client
        key = self._link.key("leader")
        restarts = self._restarts
        restarts.started()
        while True:
            raise_if_cancelling()
            wait = self._lease_ms / 3000
            if await redis().set(key, self._node, nx=True, px=self._lease_ms):
                logger.warning("cluster leadership taken node=%s", self._node)
                crashed = await self._lead()
                logger.warning("cluster leadership lost node=%s", self._node)
                if crashed is not None:
                    restarts.crashed(crashed)
                    wait = max(wait, restarts.delay())
                    logger.warning("cluster leadership paused seconds=%.1f in_a_row=%d",
                                   wait, restarts.in_a_row)  # fmt: skip
                    await asyncio.sleep(wait)
                    restarts.started()
                    continue
            await asyncio.sleep(wait)

    async def release(self) -> None:
        await self._link.client().eval(RELEASE_LEASE, 1, self._link.key("leader"), self._node)

    async def _lead(self) -> str | None:
        """Run the upstream for as long as the lease can be renewed: None if it ended by
        losing the lease, else what ended the duty that crashed (the lease is given up)."""
        self.role = "leader"
        self._upstream.interest.replace(self._union())
        bars = None
        if self._stored_bars is not None:
            bars = LeaderBars(
                self._stored_bars,
                lambda: self._upstream.interest.symbols,  # what the feed carries: what trades
                history=self._bar_history,
                grace=self._bar_grace,
                recorder=self._recorder,
            )
        publisher = UpstreamPublisher(
            self._link, self._previous_close, bars, self._upstream.feed_of
        )
        duties = [
            asyncio.create_task(self._upstream.run(publisher), name="cluster-feed"),
            asyncio.create_task(publisher.forward_events(), name="cluster-events"),
            asyncio.create_task(self._feeds.lead(), name="cluster-feeds"),
        ]
        if bars is not None:
            duties.append(asyncio.create_task(bars.run(), name="cluster-bars"))
            if self._recorder is not None:  # the store's writes and retention
                duties.append(asyncio.create_task(self._recorder.run(), name="cluster-bar-store"))
        if self._market_watch is not None:  # one poll of the market status for the cluster
            market = self._market_watch(publisher.market_changed)
            duties.append(asyncio.create_task(market.run(), name="cluster-market"))
        renewing = asyncio.create_task(self._keep_lease(), name="cluster-lease")
        crashed: str | None = None
        try:
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
            # The renewal ended by itself: the lease may be another node's already.
            lease_lost = renewing.done() and not renewing.cancelled()
            # Stop the upstream before anyone else can hold the lease.
            self.role = "follower"
            for task in (renewing, *duties):
                task.cancel()
            _, stuck = await asyncio.wait([renewing, *duties], timeout=STOP_WAIT_SECONDS)
            if stuck:
                logger.error("cluster feed did not stop within 5 s tasks=%d", len(stuck))
            if bars is not None:
                await self._write_back(bars, lease_lost)
        if crashed is None:
            return None  # the lease was lost
        await self.release()
        return crashed

    async def _write_back(self, bars: LeaderBars, lease_lost: bool) -> None:
        """Write what this leadership recorded and has not written, open bars too; drop
        what cannot be written in time (written later, it could replace a newer
        leader's revision of the same bar), and all of it when the lease was lost (a
        new leader may be writing already; it records the closed bars again from
        Redis)."""
        recorder = self._recorder
        if recorder is None:
            return
        if lease_lost:
            logger.warning("bar store: %d bars not written: the lease was lost",
                           recorder.drop_pending())  # fmt: skip
            return
        bars.record_open()
        written = False
        try:
            async with asyncio.timeout(STOP_WAIT_SECONDS):
                written = await recorder.flush()
        except TimeoutError:
            pass
        if not written:
            logger.error("bar store: %d bars not written as the leadership ended",
                         recorder.drop_pending())  # fmt: skip

    async def _keep_lease(self) -> None:
        while await self._renew_lease():
            raise_if_cancelling()

    async def _renew_lease(self) -> bool:
        """Wait a third of the lease, then extend it; False once it cannot be proven ours."""
        await asyncio.sleep(self._lease_ms / 3000)
        try:
            renewed = await self._link.client().eval(
                RENEW_LEASE, 1, self._link.key("leader"), self._node, str(self._lease_ms)
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelling(exc)
            return False
        return bool(renewed)
