"""The cluster's bars in Redis (`StoredBars`): each series' closed bars in the sorted set
`{prefix}:bars:{interval}:{symbol}` (score: the bar's start, at most BAR_HISTORY kept),
open bars in the hash `{prefix}:bars-open`, every event published on `{prefix}:bars`;
and the events' encoding on that channel. What is read back is checked: a stored or
published bar that is not a well-formed candle is skipped and counted (`skipped`),
never raised. Who writes (the leader) and who mirrors is cluster/bars.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as redis

from stock_gateway.bars.book import INTERVALS, Bar, BarEvent, Interval
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)


def encode_event(event: BarEvent) -> bytes:
    return orjson.dumps(
        {
            "symbol": event.symbol,
            "interval": event.interval,
            "bar": event.bar,
            "final": event.final,
            "revised": event.revised,
        }
    )


def decode_event(data: bytes) -> BarEvent | None:
    try:
        raw: dict[str, Any] = orjson.loads(data)
        interval = raw["interval"]
        if interval not in INTERVALS:
            return None
        Bar.from_dict(raw["bar"])  # well formed
        return BarEvent(
            str(raw["symbol"]), interval, raw["bar"], bool(raw["final"]), bool(raw["revised"])
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class StoredBars:
    """The Redis keys of a cluster's bars."""

    def __init__(self, client: Callable[[], redis.Redis], key: Callable[..., str]) -> None:
        self._client = client
        self._key = key
        self.skipped = 0  # malformed bars read (stored rows and published events)

    def series_key(self, symbol: str, interval: Interval) -> str:
        return self._key("bars", interval, symbol)

    @property
    def open_key(self) -> str:
        return self._key("bars-open")

    @property
    def channel(self) -> str:
        return self._key("bars")

    async def load(
        self, symbols: Iterable[str]
    ) -> dict[tuple[str, Interval], tuple[list[Bar], Bar | None]]:
        """Each series' stored closed bars (oldest first) and its stored open bar."""
        pairs = [(symbol, interval) for symbol in symbols for interval in INTERVALS]
        if not pairs:
            return {}
        async with self._client().pipeline(transaction=False) as pipe:
            for symbol, interval in pairs:
                pipe.zrange(self.series_key(symbol, interval), 0, -1)
            pipe.hmget(self.open_key, [f"{interval}:{symbol}" for symbol, interval in pairs])
            replies = await pipe.execute()
        opened = replies[-1]
        skipped_before = self.skipped
        loaded: dict[tuple[str, Interval], tuple[list[Bar], Bar | None]] = {}
        for (symbol, interval), members, open_bar in zip(pairs, replies, opened, strict=False):
            closed = [bar for bar in map(self._read, members) if bar is not None]
            still_open = self._read(open_bar) if open_bar else None
            if still_open is not None and closed and still_open.t <= closed[-1].t:
                still_open = None  # closed meanwhile (its final is stored)
            loaded[(symbol, interval)] = (closed, still_open)
        if self.skipped > skipped_before:
            logger.warning("cluster bars skipped malformed stored bars count=%d total=%d",
                           self.skipped - skipped_before, self.skipped)  # fmt: skip
        return loaded

    def _read(self, stored: bytes) -> Bar | None:
        try:
            return Bar.from_dict(orjson.loads(stored))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.skipped += 1
            return None

    async def store(self, events: list[BarEvent], history: int) -> None:
        """Keep and publish the leader's events, in one transaction."""
        async with self._client().pipeline(transaction=True) as pipe:
            for event in events:
                if event.partial:
                    continue  # a late trade for a bar older than Redis keeps: the store's
                field = f"{event.interval}:{event.symbol}"
                bar = orjson.dumps(event.bar)
                if event.final:
                    key = self.series_key(event.symbol, event.interval)
                    start = event.bar["t"]
                    pipe.zremrangebyscore(key, start, start)
                    pipe.zadd(key, {bar: start})
                    pipe.zremrangebyrank(key, 0, -(history + 1))
                    pipe.hdel(self.open_key, field)  # stale if a newer bar opened: rewritten
                else:
                    pipe.hset(self.open_key, field, bar)
                pipe.publish(self.channel, encode_event(event))
            await pipe.execute()

    async def delete(self, symbols: Iterable[str]) -> None:
        symbols = list(symbols)
        if not symbols:
            return
        keys = [self.series_key(s, i) for s in symbols for i in INTERVALS]
        fields = [f"{i}:{s}" for s in symbols for i in INTERVALS]
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            pipe.hdel(self.open_key, *fields)
            await pipe.execute()
