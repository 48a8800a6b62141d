"""This process's membership of the cluster, in Redis: its interest published, and the
cluster's view read (cluster/redis_relay.py runs both as duties, through Redis outages).

- **interest**: the symbols this process's clients want, as the set
  `{prefix}:interest:{node}`, which expires unless refreshed (a crashed process's
  symbols are released by themselves); every change is announced on
  `{prefix}:interest-changed`.
- **view**: who leads, how many nodes, the union of every node's interest. It is
  re-read at once when any node announces a change (`stale`, set by the relay) and
  every `VIEW_SECONDS` as a safety net; each view is handed on (the leader's upstream
  follows the union).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from stock_gateway.cluster.link import RedisLink, text
from stock_gateway.market_data.model import SymbolInterest
from stock_gateway.runtime.cancellation import raise_if_cancelling

ALIVE = b""  # marker member of every interest set; never a symbol
VIEW_SECONDS = 2.0  # the safety net: the view is re-read this often even with no news


class Membership:
    """One node's interest in Redis, and the cluster's view as last read."""

    def __init__(
        self,
        link: RedisLink,
        node: str,
        interest: SymbolInterest,
        lease_ms: int,
        on_view: Callable[[set[str]], None],
    ) -> None:
        self.node = node
        self.interest = interest  # this process's clients' symbols
        self.lease_holder: str | None = None
        self.symbols: set[str] = set()  # the union of every node's interest
        self.nodes = 0
        self.stale = asyncio.Event()  # a node announced a change: re-read the view
        self._link = link
        self._lease_ms = lease_ms
        self._on_view = on_view

    @property
    def interest_key(self) -> str:
        return self._link.key("interest", self.node)

    async def publish_interest(self) -> None:
        """Keep `{prefix}:interest:{node}` equal to this process's symbols, and alive;
        announce each change so the leader re-reads the union at once."""
        refresh = self._lease_ms / 3000
        while True:
            raise_if_cancelling()
            symbols = sorted(self.interest.symbols)
            async with self._link.client().pipeline(transaction=True) as pipe:
                pipe.delete(self.interest_key)
                pipe.sadd(self.interest_key, ALIVE)  # the key exists even with no symbols
                if symbols:
                    pipe.sadd(self.interest_key, *[symbol.encode() for symbol in symbols])
                pipe.pexpire(self.interest_key, self._lease_ms)
                pipe.publish(self._link.key("interest-changed"), self.node)
                await pipe.execute()
            try:
                async with asyncio.timeout(refresh):
                    await self.interest.wait_changed()
            except TimeoutError as timeout:
                raise_if_cancelling(timeout)

    async def watch(self) -> None:
        """The cluster-wide view: who leads, how many nodes, the union of interest."""
        redis = self._link.client
        while True:
            raise_if_cancelling()
            self.stale.clear()
            holder = await redis().get(self._link.key("leader"))
            self.lease_holder = text(holder) if holder else None
            keys = [key async for key in redis().scan_iter(self._link.key("interest", "*"))]
            members = await redis().sunion(keys) if keys else set()
            self.nodes = len(keys)
            self.symbols = {text(member) for member in members if member != ALIVE}
            self._on_view(self.symbols)
            try:
                async with asyncio.timeout(VIEW_SECONDS):
                    await self.stale.wait()  # a node announced a change
            except TimeoutError as timeout:
                raise_if_cancelling(timeout)
