"""Finnhub's REST API passed on to apps written against Finnhub (the REST mirror's
forwarded calls; endpoints/finnhub_rest_api.py answers the clients), spending the key's
one budget as little as possible:

- **only listed paths** (`FINNHUB_REST_ALLOW`) are ever forwarded: premium endpoints
  billed to the operator stay closed unless listed;
- **nothing of the client's** goes upstream but the query parameters it gave, less
  any credential (`token` in any spelling, `apikey`, ...: `without_credentials`, here
  and by the caller), re-encoded, sorted; the key travels in FinnhubRest's header;
- **identical concurrent requests make one call**: same path and parameters (sorted)
  share one future (`coalesced`);
- **successful answers are cached** per endpoint (`CACHE_SECONDS`: a company profile
  changes daily, news in minutes) in a `ResponseCache` bounded in bytes: this
  process's (`MemoryResponseCache`), or on a cluster one shared through Redis
  (cluster/rest.py); errors are never cached;
- **who may spend**: a call that is neither cached nor in flight is charged to every
  owner named (a client's user and address, `FINNHUB_REST_REQUESTS_PER_ADDRESS` a minute
  each, at most a third of the share: rest_shares.py), and forwarded calls together
  spend at most their share of the usable rate (`FINNHUB_REST_SHARE`) in any window of
  the plan (`FINNHUB_REST_WINDOW`, a minute), so quotes and the market status keep theirs;
  past either: `MirrorRefused` 429 at once. A call waits for the budget at most
  `FINNHUB_REST_WAIT` seconds, then 429 too: nothing is left hanging.

This module knows nothing of clients or HTTP beyond statuses, and never sees the key.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol
from urllib.parse import urlencode

from stock_gateway.market_data.provider import ProviderRest, RestAnswer, UpstreamUnavailable
from stock_gateway.market_data.rest_budget import MINUTE
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.sliding_window import SlidingWindow

logger = get_logger(__name__)

HOUR, DAY = 60 * MINUTE, 24 * 60 * MINUTE
# How long a successful answer is served from the cache, per path: how fast it changes.
CACHE_SECONDS: dict[str, float] = {
    "stock/profile2": DAY,
    "stock/metric": DAY,
    "stock/recommendation": DAY,
    "stock/peers": DAY,
    "stock/market-holiday": DAY,
    "calendar/earnings": HOUR,
    "search": HOUR,
    "company-news": 5 * MINUTE,
    "news": 5 * MINUTE,
    "stock/market-status": MINUTE,  # forwarded only until the market watch has polled
}
DEFAULT_CACHE_SECONDS = 5 * MINUTE  # a path listed in FINNHUB_REST_ALLOW but not above
# Finnhub's own words where it has them, so its clients read them as they would its own.
NOT_LISTED = "You don't have access to this resource."
AT_THE_LIMIT = "API limit reached. Please try again later."
RESTARTING = "The gateway is restarting."


class MirrorRefused(Exception):
    """No answer for this request: `reason` (for /metrics), an HTTP status, a message."""

    def __init__(self, reason: str, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = max(1, math.ceil(retry_after)) if retry_after else 0


class ResponseCache(Protocol):
    """Where answers are kept: this process's memory, or the cluster's Redis."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, body: bytes, seconds: float) -> None: ...


class MemoryResponseCache:
    """Answers kept until they expire, at most `max_bytes` of them (keys counted too),
    the least recently used out first; an answer larger than the bound is not kept."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.held = 0  # bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def put(self, key: str, body: bytes, seconds: float) -> None:
        self._drop(key)
        size = len(key) + len(body)
        if size > self.max_bytes or seconds <= 0:
            return
        now = self._clock()
        for stale in [k for k, (_, expires) in self._entries.items() if expires <= now]:
            self._drop(stale)
        while self.held + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (body, now + seconds)
        self.held += size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.held -= len(key) + len(entry[0])


# Query parameters that carry a credential, compared case-folded: never forwarded, never
# in a cache key (Finnhub's `token`, however an app spells it, and the usual others).
CREDENTIAL_PARAMS = frozenset({"token", "x-finnhub-token", "apikey", "api_key", "access_token"})


def without_credentials(params: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in params if name.casefold() not in CREDENTIAL_PARAMS]


def cache_key(path: str, params: Iterable[tuple[str, str]]) -> str:
    """One key per request as forwarded: the path and its parameters, sorted."""
    return f"{path}?{urlencode(sorted(params))}"


def listed_paths(paths: Iterable[str]) -> frozenset[str]:
    """FINNHUB_REST_ALLOW's entries as the mirror compares them: no slashes around."""
    return frozenset(stripped for path in paths if (stripped := path.strip().strip("/")))


class RestMirror:
    def __init__(
        self,
        rest: ProviderRest,
        cache: ResponseCache,
        quotas: Allowances,
        *,
        allowed: Iterable[str],
        wait: float,
        window: float,  # the plan's minute, FINNHUB_REST_WINDOW: `calls_per_minute`'s span
        calls_per_minute: int,
    ) -> None:
        self.allowed = listed_paths(allowed)
        self._rest = rest
        self._cache = cache
        self._quotas = quotas  # each owner's calls a minute
        self._wait = wait
        self._share = SlidingWindow(max(calls_per_minute, 1), window)
        self._in_flight: dict[str, asyncio.Future[RestAnswer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarded = 0  # calls Finnhub answered
        self.cache_hits = 0
        self.coalesced = 0  # requests that shared another's call
        self.refused: dict[str, int] = {}  # reason -> answers refused, for /metrics

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def get(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        owners: Sequence[str],
        *,
        unlisted: bool = False,
    ) -> RestAnswer:
        """Finnhub's answer to `path` with `params`: cached, shared with an identical
        call in flight, or fetched now within the owners' quotas and the share; or
        MirrorRefused. `unlisted`: the gateway's own reason to call a path not listed."""
        if path not in self.allowed and not unlisted:
            raise MirrorRefused("not_allowed", 403, NOT_LISTED)
        params = without_credentials(params)
        key = cache_key(path, params)
        while True:
            joined = self._in_flight.get(key)
            if joined is not None:
                self.coalesced += 1
                return await asyncio.shield(joined)
            cached = await self._cache.get(key)
            if cached is not None:
                self.cache_hits += 1
                return RestAnswer(200, cached)
            if key not in self._in_flight:  # nobody started it while we looked
                break
        loop = asyncio.get_running_loop()
        now = loop.time()
        if wait := self._share.wait(now):
            raise MirrorRefused("share", 429, AT_THE_LIMIT, wait)
        if wait := self._quotas.take_all(owners, now):
            raise MirrorRefused("quota", 429, AT_THE_LIMIT + " (your address's or user's)", wait)
        self._share.take(now)
        future: asyncio.Future[RestAnswer] = loop.create_future()
        self._in_flight[key] = future
        # Its own task: a client hanging up must not cancel the call others wait for.
        task = asyncio.create_task(self._fetch(key, path, params, future, now + self._wait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _fetch(
        self,
        key: str,
        path: str,
        params: Sequence[tuple[str, str]],
        future: asyncio.Future[RestAnswer],
        deadline: float,
    ) -> None:
        try:
            answer = await self._rest.forward("/" + path, sorted(params), deadline)
            self.forwarded += 1  # answered by Finnhub (tries that were not: rest_calls)
            if answer.status == 200:
                seconds = CACHE_SECONDS.get(path, DEFAULT_CACHE_SECONDS)
                await self._cache.put(key, answer.body, seconds)
            future.set_result(answer)
        except UpstreamUnavailable as exc:
            logger.info("forwarded call unavailable path=%s reason=%s", path, exc)
            # The budget's wait, or Finnhub itself: answered as Finnhub does at its limit
            # unless Finnhub cannot be reached or refuses the key.
            if self._rest.state in ("unreachable", "unauthorized"):
                why = f"Finnhub cannot be reached now ({exc})."
                future.set_exception(MirrorRefused("unavailable", 503, why, exc.retry_after or 5))
            else:
                future.set_exception(
                    MirrorRefused("budget", 429, AT_THE_LIMIT, exc.retry_after or 1)
                )
        except Exception:  # one bad answer must not leave its waiters hanging
            logger.exception("forwarded call failed path=%s", path)
            why = "Finnhub's answer could not be passed on."
            future.set_exception(MirrorRefused("unavailable", 502, why, 5))
        finally:
            self._in_flight.pop(key, None)
            if not future.done():  # cancelled: the gateway is stopping
                future.set_exception(MirrorRefused("unavailable", 503, RESTARTING, 1))
            future.exception()  # retrieved here: nobody may be waiting any more

    async def aclose(self) -> None:
        """Stop the calls in flight (the gateway is stopping); their waiters get 503."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
