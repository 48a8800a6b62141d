"""Quotes, for a price on every card when no trade has come (the market is closed, or
the symbol is quiet), and the previous close behind each update's daily change.

`QuoteService.request(symbol)` returns a future shared by everyone asking for that
symbol: a fresh cached quote (`QUOTE_TTL`) resolves it at once, otherwise the symbol
joins a queue that `run()` works through in the order asked, each fetch through the
REST budget and within `QUOTE_WAIT` of being asked; past that the future fails with
`QuoteUnavailable` (never a hang). Thousands of subscribers of one symbol cost one
call. A quote of "no quote" (Finnhub's zeros for an unknown symbol) resolves to None.
The previous close of every quote seen is kept, bounded, for `change` on trades.

The key's budget is tiny (60 calls a minute on the free plan), so each owner (a client
address) may cause at most `QUOTE_REQUESTS_PER_ADDRESS` fetches a minute, whether it
subscribes over `/ws` or asks `GET /quote`; cached and in-flight quotes cost nothing.
At most `max_queued` fetches wait at once; past that, `QuoteUnavailable` at once.

This module never talks to clients (the hub does) and never spends the budget itself
(the `QuoteSource` does).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

from access.allowances import Allowances
from market_data.finnhub_rest import RestUnavailable
from market_data.model import Quote
from runtime.logs import get_logger

logger = get_logger(__name__)

MAX_CACHED = 5000  # symbols whose quote (and previous close) is remembered


class QuoteUnavailable(Exception):
    def __init__(self, message: str, retry_after: float, *, share_spent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.share_spent = share_spent  # the asker's own share, not the key's budget


class QuoteSource(Protocol):
    """Where quotes come from: Finnhub's REST client, or the cluster's shared cache."""

    async def quote(self, symbol: str, deadline: float) -> Quote | None: ...


class QuoteService:
    def __init__(
        self,
        source: QuoteSource,
        shares: Allowances,
        *,
        ttl: float = 60.0,
        wait: float = 10.0,
        max_queued: int = 256,
    ) -> None:
        self._source = source
        self._shares = shares  # each owner's share of the key's budget
        self._ttl = ttl
        self._wait = wait
        self._max_queued = max_queued
        self._cache: OrderedDict[str, tuple[Quote | None, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Quote | None]] = {}
        self._queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self.fetched = 0
        self.unavailable = 0

    # -- what the hub and the HTTP side ask ----------------------------------------------

    def cached(self, symbol: str) -> Quote | None:
        """A fresh quote, if one is cached (None also for a fresh "no quote")."""
        entry = self._cache.get(symbol)
        if entry is None or entry[1] < asyncio.get_running_loop().time() - self._ttl:
            return None
        return entry[0]

    def is_fresh(self, symbol: str) -> bool:
        entry = self._cache.get(symbol)
        return entry is not None and entry[1] >= asyncio.get_running_loop().time() - self._ttl

    def previous_close(self, symbol: str) -> float | None:
        entry = self._cache.get(symbol)
        quote = entry[0] if entry is not None else None
        return quote.previous_close if quote is not None and quote.previous_close > 0 else None

    def request(self, symbol: str, owner: str = "-") -> asyncio.Future[Quote | None]:
        """The quote for `symbol`: cached, in flight, or fetched now if `owner` still has
        a share of the budget and the queue has room."""
        loop = asyncio.get_running_loop()
        if self.is_fresh(symbol):
            return _settled(loop, self._cache[symbol][0])
        future = self._pending.get(symbol)
        if future is not None:
            return future  # in flight: joining costs nothing
        wait = self._shares.take(owner, loop.time())
        if wait:
            self.unavailable += 1
            spent = QuoteUnavailable("too many quotes asked for", wait, share_spent=True)
            return _settled(loop, spent)
        if len(self._pending) >= self._max_queued:
            self.unavailable += 1
            return _settled(loop, QuoteUnavailable("too many quotes asked for at once", 5.0))
        future = self._pending[symbol] = loop.create_future()
        self._queue.put_nowait((symbol, loop.time()))
        return future

    async def get(self, symbol: str, owner: str = "-") -> Quote | None:
        """Wait for the quote (QuoteUnavailable past the bound)."""
        return await asyncio.shield(self.request(symbol, owner))

    def remember(self, symbol: str, quote: Quote | None) -> None:
        """A quote learned elsewhere (another process of the cluster)."""
        self._store(symbol, quote)
        if symbol in self._pending:
            self._settle(symbol, quote)

    # -- the worker --------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch queued symbols in order, several at once, until cancelled."""
        try:
            async with asyncio.TaskGroup() as fetches:
                while True:
                    symbol, asked_at = await self._queue.get()
                    if self.is_fresh(symbol):  # learned meanwhile
                        self._settle(symbol, self._cache[symbol][0])
                        continue
                    fetches.create_task(self._fetch(symbol, asked_at + self._wait))
                    await asyncio.sleep(0)  # let it take its turn at the budget, in order
        finally:
            for symbol in list(self._pending):
                self._settle(symbol, QuoteUnavailable("the gateway is restarting", 1.0))

    async def _fetch(self, symbol: str, deadline: float) -> None:
        try:
            quote = await self._source.quote(symbol, deadline)
        except RestUnavailable as exc:
            self.unavailable += 1
            logger.info("quote unavailable symbol=%s reason=%s", symbol, exc)
            self._settle(symbol, QuoteUnavailable(str(exc), exc.retry_after))
            return
        except Exception:  # one bad answer must not stop every other fetch
            self.unavailable += 1
            logger.exception("quote fetch failed symbol=%s", symbol)
            self._settle(symbol, QuoteUnavailable("the quote could not be read", 5.0))
            return
        self.fetched += 1
        self._store(symbol, quote)
        self._settle(symbol, quote)

    def _store(self, symbol: str, quote: Quote | None) -> None:
        self._cache[symbol] = (quote, asyncio.get_running_loop().time())
        self._cache.move_to_end(symbol)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    def _settle(self, symbol: str, outcome: Quote | QuoteUnavailable | None) -> None:
        future = self._pending.pop(symbol, None)
        if future is None or future.done():
            return
        if isinstance(outcome, QuoteUnavailable):
            future.set_exception(outcome)
            future.exception()  # retrieved here: nobody may be waiting any more
        else:
            future.set_result(outcome)


def _settled(
    loop: asyncio.AbstractEventLoop, outcome: Quote | QuoteUnavailable | None
) -> asyncio.Future[Quote | None]:
    future: asyncio.Future[Quote | None] = loop.create_future()
    if isinstance(outcome, QuoteUnavailable):
        future.set_exception(outcome)
        future.exception()  # nobody may look
    else:
        future.set_result(outcome)
    return future
