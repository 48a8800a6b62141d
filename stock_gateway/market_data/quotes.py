"""Quotes, for a price on every card when no trade has come (the market is closed, or
the symbol is quiet), and the previous close behind each update's daily change.

`QuoteService.request(symbol, owners)` returns a future shared by everyone asking for
that symbol: a fresh cached quote (quote_cache.py: `QUOTE_TTL`, `QUOTE_UNKNOWN_TTL`)
resolves it at once, otherwise the symbol joins a queue `run()` works through, each
fetch through the REST budget within `QUOTE_WAIT` of being asked, else the future fails
with `QuoteUnavailable` (never a hang). Thousands of subscribers of one symbol cost one
call. Who gets the key's tiny budget (60 calls a minute on the free plan), in order:

1. **a subscriber's ask**: a client subscribing (or `GET /quote` of a symbol some
   client subscribes to) goes ahead of everything else in the queue;
2. **a one-off lookup** (`GET /quote` of a symbol nobody subscribes to): at most
   `lookups_per_minute` (`QUOTE_LOOKUP_SHARE`: rest_shares.py) in any 60 s, more are
   refused at once, so junk lookups can never take the budget from subscribers;
3. **a refresh**: at a market-session change (`refresh`: perhaps a new trading day)
   every carried symbol whose quote is older than `QUOTE_TTL`, in the order given, one
   at a time at most `refreshes_per_minute`, only when no client waits;
4. **a poll** (`poll`): the symbols the feed planner serves by REST (feed_plan.py),
   most urgent first, evenly spaced (`polls`), when no client waits, no refresh is
   due and the key's budget has room (quote_polls.py): whatever the others leave.
   Polled quotes go to `on_polled` listeners, every answer ("no quote" too) to
   `on_quoted` ones (the planner); a poll of a symbol being fetched joins that fetch.

At most `IN_FLIGHT` fetches are on their way at once, so a subscriber's ask never
waits at the budget behind more than those. Each fetch is charged to every owner
named (a client's user and its address, `QUOTE_REQUESTS_PER_ADDRESS` a minute each);
cached and in-flight quotes cost nothing. At most `max_queued` fetches wait at once.
A quote with a new previous close (a new day's) goes to `on_new_close` listeners.
This module never talks to clients (the hub does) and never spends the budget itself
(the `QuoteSource` does).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stock_gateway.market_data.model import Quote
from stock_gateway.market_data.provider import UpstreamUnavailable
from stock_gateway.market_data.quote_cache import QuoteCache
from stock_gateway.market_data.quote_polls import PollPace
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.sliding_window import SlidingWindow

logger = get_logger(__name__)

SUBSCRIBER, LOOKUP, REFRESH, POLL = 0, 1, 2, 3  # what a fetch is for, first served first
IN_FLIGHT = 4  # fetches on their way to the budget at once
QuoteListener = Callable[[str, Quote], None]
AnswerListener = Callable[[str, Quote | None], None]


class QuoteUnavailable(Exception):
    def __init__(self, message: str, retry_after: float, *, share_spent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.share_spent = share_spent  # the asker's own share, not the key's budget


class QuoteSource(Protocol):
    """Where quotes come from: Finnhub's REST client, or the cluster's shared cache."""

    async def quote(self, symbol: str, deadline: float) -> Quote | None: ...


@dataclass(eq=False)
class _Ask:
    """One fetch to make: every asker of the symbol shares its future."""

    future: asyncio.Future[Quote | None]
    deadline: float  # loop time
    kind: int  # SUBSCRIBER, LOOKUP or REFRESH
    timer: asyncio.TimerHandle | None = None  # fails it at the deadline while queued


class QuoteService:
    def __init__(
        self,
        source: QuoteSource,
        shares: Allowances,
        *,
        ttl: float,
        wait: float,
        unknown_ttl: float,
        window: float,  # the plan's minute, FINNHUB_REST_WINDOW: the per-minute counts' span
        lookups_per_minute: int,
        refreshes_per_minute: int,
        polls: PollPace,
        max_queued: int = 256,
    ) -> None:
        self._source = source
        self._shares = shares  # each owner's share of the key's budget
        self._wait = wait
        self._max_queued = max_queued
        self._cache = QuoteCache(ttl, unknown_ttl)
        self._pending: dict[str, _Ask] = {}
        self._queue: list[tuple[int, int, str, _Ask]] = []  # a heap: kind, then order asked
        self._order = itertools.count()
        self._fetching: set[str] = set()
        self._refreshes: dict[str, None] = {}  # the symbols to refresh, in order
        self._lookups = SlidingWindow(max(lookups_per_minute, 1), window)
        # Refreshes one at a time, evenly spaced: a session change never takes a burst.
        self._refreshed = SlidingWindow(1, window / max(refreshes_per_minute, 1))
        self._polls = polls
        self._poll_listeners: list[QuoteListener] = []
        self._quote_listeners: list[AnswerListener] = []
        self._listeners: list[QuoteListener] = []  # of new previous closes
        self._work = asyncio.Event()
        self.fetched = 0
        self.unavailable = 0

    # -- what the hub and the HTTP side ask ----------------------------------------------

    def previous_close(self, symbol: str) -> float | None:
        return self._cache.previous_close(symbol)

    def last(self, symbol: str) -> Quote | None:  # however old: asking costs nothing
        return self._cache.get(symbol)

    def fresh(self, symbol: str) -> bool:
        """Whether a quote of `symbol` is cached and fresh (asking costs nothing)."""
        return self._cache.fresh(symbol, asyncio.get_running_loop().time())

    def on_new_close(self, listener: QuoteListener) -> None:
        """Call `listener(symbol, quote)` whenever a quote brings a new previous close."""
        self._listeners.append(listener)

    def request(
        self, symbol: str, owners: str | Sequence[str] = "-", *, lookup: bool = False
    ) -> asyncio.Future[Quote | None]:
        """The quote for `symbol`: cached, in flight, or fetched now if every owner still
        has a share of the budget (and, for a one-off `lookup`, lookups have theirs)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._cache.fresh(symbol, now):
            return _settled(loop, self._cache.get(symbol))
        ask = self._pending.get(symbol)
        if ask is not None:  # queued or in flight: joining costs nothing
            if not lookup and ask.kind != SUBSCRIBER and symbol not in self._fetching:
                ask.kind = SUBSCRIBER  # a subscriber joined a queued lookup: it goes ahead
                self._push(symbol, ask)
            return ask.future
        if lookup and (wait := self._lookups.wait(now)):
            why = "one-off lookups have spent their share of the REST budget"
            return self._refuse(loop, QuoteUnavailable(why, wait))
        keys = (owners,) if isinstance(owners, str) else owners
        if wait := self._shares.take_all(keys, now):
            spent = QuoteUnavailable("too many quotes asked for", wait, share_spent=True)
            return self._refuse(loop, spent)
        if len(self._pending) >= self._max_queued:
            return self._refuse(loop, QuoteUnavailable("too many quotes asked for at once", 5.0))
        if lookup:
            self._lookups.take(now)
        ask = _Ask(loop.create_future(), now + self._wait, LOOKUP if lookup else SUBSCRIBER)
        ask.timer = loop.call_at(ask.deadline, self._expire, symbol, ask)
        self._pending[symbol] = ask
        self._push(symbol, ask)
        return ask.future

    async def get(
        self, symbol: str, owners: str | Sequence[str] = "-", *, lookup: bool = False
    ) -> Quote | None:
        """Wait for the quote (QuoteUnavailable past the bound)."""
        return await asyncio.shield(self.request(symbol, owners, lookup=lookup))

    def refresh(self, symbols: Iterable[str]) -> None:
        """Fetch again, at the refresh pace, every one of `symbols` (the carried ones,
        subscribed first) whose quote is older than QUOTE_TTL: a market-session change
        may have begun a new trading day, with a new previous close."""
        now = asyncio.get_running_loop().time()
        self._refreshes = dict.fromkeys(s for s in symbols if not self._cache.fresh(s, now))
        if self._refreshes:
            self._work.set()

    def poll(self, symbols: list[str]) -> None:
        """From now on, poll these symbols (most urgent first) at the poll pace."""
        if self._polls.replace(symbols):
            self._work.set()

    def on_polled(self, listener: QuoteListener) -> None:
        """Call `listener(symbol, quote)` with every polled quote."""
        self._poll_listeners.append(listener)

    def on_quoted(self, listener: AnswerListener) -> None:
        """... and this one with every answer fetched (None: no quote), whoever asked."""
        self._quote_listeners.append(listener)

    def remember(self, symbol: str, quote: Quote | None) -> None:
        """A quote learned elsewhere (another process of the cluster)."""
        self._store(symbol, quote)
        if symbol in self._pending:
            self._settle(symbol, quote)

    # -- the worker --------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch what is asked for, most urgent first, a few at once, until cancelled."""
        in_flight = asyncio.Semaphore(IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as fetches:
                while True:
                    await in_flight.acquire()
                    symbol, ask = await self._next()
                    self._fetching.add(symbol)
                    fetches.create_task(self._fetch(symbol, ask, in_flight))
                    await asyncio.sleep(0)  # let it take its turn at the budget, in order
        finally:
            self._fetching.clear()
            self._queue.clear()
            for symbol in list(self._pending):
                self._settle(symbol, QuoteUnavailable("the gateway is restarting", 1.0))

    async def _next(self) -> tuple[str, _Ask]:
        """The next fetch: a client's ask, else a refresh when its pace allows."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._queue:
                _, _, symbol, ask = heapq.heappop(self._queue)
                if self._pending.get(symbol) is not ask or symbol in self._fetching:
                    continue  # settled meanwhile, or already on its way
                if self._cache.fresh(symbol, now):  # learned meanwhile
                    self._settle(symbol, self._cache.get(symbol))
                    continue
                return symbol, ask
            pause: float | None = None
            if self._refreshes:
                pause = self._refreshed.wait(now)
                if not pause:
                    refresh = self._take_refresh(loop)
                    if refresh is not None:
                        return refresh
                    continue
            if self._polls and not self._refreshes:
                wait = self._polls.wait(now)
                if not wait:
                    polled = self._take_poll(loop)
                    if polled is not None:
                        return polled
                pause = wait if wait else None
            self._work.clear()
            try:
                async with asyncio.timeout(pause):
                    await self._work.wait()  # an ask, or a refresh's turn
            except TimeoutError as timeout:
                raise_if_cancelling(timeout)

    def _take_refresh(self, loop: asyncio.AbstractEventLoop) -> tuple[str, _Ask] | None:
        now = loop.time()
        while self._refreshes:
            symbol = next(iter(self._refreshes))
            del self._refreshes[symbol]
            if self._cache.fresh(symbol, now) or symbol in self._pending:
                continue  # fetched meanwhile, or being fetched
            self._refreshed.take(now)
            ask = self._pending[symbol] = _Ask(loop.create_future(), now + self._wait, REFRESH)
            return symbol, ask
        return None

    def _take_poll(self, loop: asyncio.AbstractEventLoop) -> tuple[str, _Ask] | None:
        now = loop.time()
        if (symbol := self._polls.take(now, self._pending)) is None:
            return None
        ask = self._pending[symbol] = _Ask(loop.create_future(), now + self._wait, POLL)
        return symbol, ask

    async def _fetch(self, symbol: str, ask: _Ask, in_flight: asyncio.Semaphore) -> None:
        try:
            quote = await self._source.quote(symbol, ask.deadline)
        except UpstreamUnavailable as exc:
            self.unavailable += 1
            logger.info("quote unavailable symbol=%s reason=%s", symbol, exc)
            self._settle(symbol, QuoteUnavailable(str(exc), exc.retry_after))
            if ask.kind == REFRESH:  # tried again later, at the refresh pace
                self._refreshes.setdefault(symbol)
                self._work.set()
            return
        except Exception:  # one bad answer must not stop every other fetch
            self.unavailable += 1
            logger.exception("quote fetch failed symbol=%s", symbol)
            self._settle(symbol, QuoteUnavailable("the quote could not be read", 5.0))
            return
        finally:
            self._fetching.discard(symbol)
            in_flight.release()
        self.fetched += 1
        self._store(symbol, quote)
        self._settle(symbol, quote)
        self._polls.answered(symbol)
        for answered in self._quote_listeners:
            answered(symbol, quote)  # "no quote" too: the planner has its answer
        if quote is not None and ask.kind == POLL:
            for listener in self._poll_listeners:
                listener(symbol, quote)

    # -- the bookkeeping ---------------------------------------------------------------

    def _push(self, symbol: str, ask: _Ask) -> None:
        heapq.heappush(self._queue, (ask.kind, next(self._order), symbol, ask))
        self._work.set()

    def _expire(self, symbol: str, ask: _Ask) -> None:
        """QUOTE_WAIT passed and the fetch has not even started: the budget is taken."""
        if self._pending.get(symbol) is ask and symbol not in self._fetching:
            self.unavailable += 1
            logger.info("quote unavailable symbol=%s reason=not fetched in time", symbol)
            self._settle(symbol, QuoteUnavailable("the REST budget is taken", self._wait))

    def _refuse(
        self, loop: asyncio.AbstractEventLoop, refusal: QuoteUnavailable
    ) -> asyncio.Future[Quote | None]:
        self.unavailable += 1
        return _settled(loop, refusal)

    def _store(self, symbol: str, quote: Quote | None) -> None:
        if self._cache.store(symbol, quote, asyncio.get_running_loop().time()):
            assert quote is not None  # only a quote brings a new previous close
            for listener in self._listeners:
                listener(symbol, quote)

    def _settle(self, symbol: str, outcome: Quote | QuoteUnavailable | None) -> None:
        ask = self._pending.pop(symbol, None)
        if ask is None or ask.future.done():
            return
        if ask.timer is not None:
            ask.timer.cancel()
        if isinstance(outcome, QuoteUnavailable):
            ask.future.set_exception(outcome)
            ask.future.exception()  # retrieved here: nobody may be waiting any more
        else:
            ask.future.set_result(outcome)


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
