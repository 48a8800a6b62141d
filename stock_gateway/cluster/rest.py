"""Finnhub's REST budget, quote cache and the REST mirror's answers, shared by every
process of a cluster.

The budget belongs to the key, so with `REDIS_URL` it is kept in Redis: `RedisBudget`
is a sliding-window log in a sorted set, checked and extended by one Lua script on
Redis's own clock, so no window (`FINNHUB_REST_WINDOW`, a minute) holds more calls
than `FINNHUB_REST_RATE` whichever processes make them, across failovers too (with the
same margin and slack as one process's window: market_data/rest_budget.py). Any
process may call Finnhub (a Redis-side limiter rather than leader-only fetching: a
follower's client gets its quote without a round trip through the leader, and a new
leader inherits the window instead of starting a fresh one).

`ClusterQuoteSource` serves quotes from `{prefix}:quote:{symbol}` (expiring after
`QUOTE_TTL`, or `QUOTE_UNKNOWN_TTL` for "no quote"); on a miss one process wins
`{prefix}:quote-lock:{symbol}`, fetches, stores and announces the quote on
`{prefix}:quotes`, which every process's relay hands to its `QuoteService` (so each
knows every previous close); the others wait for it.

`RedisResponseCache` keeps the REST mirror's answers (market_data/rest_mirror.py) as
`{prefix}:rest-answer:{sha256 of path and parameters}`, expiring after the endpoint's
cache time, at most FINNHUB_REST_CACHE_BYTES of them in all: one Lua script stores an
answer and evicts (the expired first, then those closest to expiring) until it fits,
keeping each answer's size in `{prefix}:rest-answers`, their expiry times in
`{prefix}:rest-answer-expiry` and the total in `{prefix}:rest-answer-bytes`. Redis
unreachable: a miss, and nothing stored (the answer is still served).

This module never stores or publishes the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import asdict

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

from stock_gateway.market_data.model import Quote
from stock_gateway.market_data.provider import UpstreamUnavailable
from stock_gateway.market_data.quotes import QuoteSource
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

# KEYS[1] the call log; ARGV: limit per window, limit per second, a unique member, the
# window's length in ms (FINNHUB_REST_WINDOW and the slack). Returns 0 (a slot was taken) or the
# milliseconds until one frees.
TAKE_SLOT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local span = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - span)
local wait = 0
local minute = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local count = #minute / 2
if count >= tonumber(ARGV[1]) then
  local oldest = tonumber(minute[(count - tonumber(ARGV[1])) * 2 + 2])
  wait = math.max(wait, oldest + span - ms)
end
local second = redis.call('ZCOUNT', KEYS[1], ms - 999, '+inf')
if second >= tonumber(ARGV[2]) then wait = math.max(wait, 1000) end
if wait > 0 then return wait end
redis.call('ZADD', KEYS[1], ms, ARGV[3])
redis.call('PEXPIRE', KEYS[1], span + 1000)
return 0
"""
RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
POLL_SECONDS = 0.1
# KEYS: the answer, the sizes (hash: answer key -> bytes), the expiry index (sorted set),
# the total; ARGV: the body, its lifetime in ms, the bound in bytes. 1 stored, 0 too big.
PUT_ANSWER = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local size, bound = string.len(ARGV[1]), tonumber(ARGV[3])
local function drop(member)
  local held = tonumber(redis.call('HGET', KEYS[2], member) or '0')
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('DEL', member)
  redis.call('DECRBY', KEYS[4], held)
end
drop(KEYS[1])
if size > bound then return 0 end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ms)) do drop(member) end
while tonumber(redis.call('GET', KEYS[4]) or '0') + size > bound do
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #first == 0 then break end
  drop(first[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], KEYS[1], size)
redis.call('ZADD', KEYS[3], ms + tonumber(ARGV[2]), KEYS[1])
redis.call('INCRBY', KEYS[4], size)
return 1
"""


class RedisBudget:
    """A `CallBudget` shared by the cluster; FIFO within this process."""

    def __init__(
        self,
        client: Callable[[], redis.Redis],
        key: str,
        per_minute: int,
        window: float,
        per_second: int = 30,
        *,
        slack: float = 0.0,
    ) -> None:
        self._client = client  # the cluster's current connection (it is remade on restart)
        self._span_ms = int((window + slack) * 1000)
        self._key = key
        self.per_minute = per_minute
        self._per_second = per_second
        self._turn = asyncio.Lock()
        self._serial = 0
        self._name = uuid.uuid4().hex  # call-log members must be unique across processes
        self._last_wait = 1.0

    async def acquire(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline), self._turn:
                while True:
                    self._serial += 1
                    member = f"{self._name}:{self._serial}"
                    wait_ms = await self._client().eval(
                        TAKE_SLOT,
                        1,
                        self._key,
                        self.per_minute,
                        self._per_second,
                        member,
                        self._span_ms,
                    )
                    if not wait_ms:
                        return
                    self._last_wait = int(wait_ms) / 1000
                    await asyncio.sleep(min(self._last_wait, max(deadline - loop.time(), 0)))
        except TimeoutError:
            raise UpstreamUnavailable("the REST budget is spent", self._last_wait) from None
        except (RedisError, OSError) as exc:
            why = f"the cluster's budget is unreachable ({type(exc).__name__})"
            raise UpstreamUnavailable(why) from None

    def wait_estimate(self) -> float:
        return max(self._last_wait, 1.0)


class ClusterQuoteSource:
    """Quotes through the cluster's cache: one fetch per symbol per TTL, cluster-wide."""

    def __init__(
        self,
        client: Callable[[], redis.Redis],
        key: Callable[..., str],
        rest: QuoteSource,
        *,
        ttl: float,
        unknown_ttl: float,
    ) -> None:
        self._client = client
        self._key = key
        self._rest = rest
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._unknown_ttl_ms = max(int(unknown_ttl * 1000), 1)

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                cached = await self._client().get(self._key("quote", symbol))
                if cached is not None:
                    return decode_quote(cached)
                lock, token = self._key("quote-lock", symbol), uuid.uuid4().hex
                hold_ms = max(int((deadline - loop.time()) * 1000), 1)
                if await self._client().set(lock, token, nx=True, px=hold_ms):
                    try:
                        quote = await self._rest.quote(symbol, deadline)
                        await self.store(symbol, quote)
                        return quote
                    finally:  # only our own lock: it may have expired and passed on
                        await self._client().eval(RELEASE_IF_OURS, 1, lock, token)
                if loop.time() + POLL_SECONDS >= deadline:
                    raise UpstreamUnavailable("another process is still fetching this quote")
                await asyncio.sleep(POLL_SECONDS)  # another process is fetching: its result
        except (RedisError, OSError, ValueError, TypeError) as exc:
            why = f"the cluster's quote cache is unreachable or unreadable ({type(exc).__name__})"
            raise UpstreamUnavailable(why) from None

    async def store(self, symbol: str, quote: Quote | None) -> None:
        payload = encode_quote(symbol, quote)
        async with self._client().pipeline(transaction=False) as pipe:
            ttl_ms = self._ttl_ms if quote is not None else self._unknown_ttl_ms
            pipe.set(self._key("quote", symbol), payload, px=ttl_ms)
            pipe.publish(self._key("quotes"), payload)
            await pipe.execute()


def encode_quote(symbol: str, quote: Quote | None) -> bytes:
    return orjson.dumps({"symbol": symbol, "quote": asdict(quote) if quote else None})


def decode_quote(payload: bytes | str) -> Quote | None:
    body = orjson.loads(payload)
    quote = body.get("quote") if isinstance(body, dict) else None
    return Quote(**quote) if isinstance(quote, dict) else None


def decode_announcement(payload: bytes | str) -> tuple[str, Quote | None]:
    body = orjson.loads(payload)
    return str(body["symbol"]), decode_quote(payload)


class RedisResponseCache:
    """The REST mirror's `ResponseCache` on a cluster: one for every process."""

    def __init__(
        self, client: Callable[[], redis.Redis], key: Callable[..., str], max_bytes: int
    ) -> None:
        self._client = client
        self._key = key
        self.max_bytes = max_bytes

    def _answer_key(self, key: str) -> str:
        return self._key("rest-answer", hashlib.sha256(key.encode()).hexdigest())

    async def get(self, key: str) -> bytes | None:
        try:
            body = await self._client().get(self._answer_key(key))
        except (RedisError, OSError) as exc:
            logger.info("the cluster's REST answers are unreachable (%s)", type(exc).__name__)
            return None
        return body if isinstance(body, bytes) else None

    async def put(self, key: str, body: bytes, seconds: float) -> None:
        keys = (
            self._answer_key(key),
            self._key("rest-answers"),
            self._key("rest-answer-expiry"),
            self._key("rest-answer-bytes"),
        )
        try:
            await self._client().eval(
                PUT_ANSWER, len(keys), *keys, body, max(int(seconds * 1000), 1), self.max_bytes
            )
        except (RedisError, OSError) as exc:
            logger.info("an answer could not be kept in the cluster (%s)", type(exc).__name__)
