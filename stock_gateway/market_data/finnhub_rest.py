"""Finnhub's REST API (`/quote`, `/stock/market-status`, and the calls the REST mirror
forwards: `forward`), always within the key's budget.

One aiohttp `ClientSession` for the process; the key travels only in the
`X-Finnhub-Token` header, never in a URL that could be logged. Every call first takes
a slot from a `CallBudget`: a sliding window, so no 60-second window ever holds more
calls than the plan allows (a token bucket that starts full would let nearly twice
the limit through in its first minute), plus Finnhub's 30 calls a second on every
plan. The gateway keeps a margin under the plan (`usable_rate`: 5%, at least one call
a minute, for anything else that uses the key) and counts its minute `WINDOW_SLACK`
longer: a call counted when its slot was granted reaches Finnhub a little later, and
without the slack the first call of a minute, slow to arrive, and the first of the next
minute, quick, could fall into one of Finnhub's 60 s windows with a whole plan's calls
between them. Slots are granted in the order they were asked for. A 429 pauses every call
(honouring `Retry-After`), a 401/403 marks the REST side unauthorized (logged once),
network errors and 5xx are retried with backoff, all within the caller's deadline.
Redirects are never followed: the key header would go wherever the `Location` points,
so a 3xx is an error (logged with its status, not where it pointed). A forwarded call's
answer is passed on as Finnhub sent it (its bytes, and its status for a client error
such as 403 "You don't have access to this resource", which says nothing of the key).

This module never logs the key or a URL carrying it, and knows nothing of clients.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import aiohttp

from stock_gateway.market_data.finnhub_wire import parse_market_status, parse_quote
from stock_gateway.market_data.model import MarketStatus, Quote
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

RestState = Literal["ok", "unauthorized", "rate_limited", "unreachable"]
REST_STATES: tuple[RestState, ...] = get_args(RestState)
MINUTE = 60.0
WINDOW_SLACK = 1.0  # seconds added to our minute: more than a call's way to Finnhub
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a forwarded answer larger than this is refused
Params = Mapping[str, str] | Sequence[tuple[str, str]]


def usable_rate(plan_rate: int) -> int:
    """The calls a minute the gateway makes of a plan's `plan_rate`: a margin kept back."""
    return max(1, plan_rate - max(1, plan_rate // 20))


class RestUnavailable(Exception):
    """No answer within the deadline: budget spent, Finnhub unreachable or refusing."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RestAnswer:
    """A forwarded call's answer as Finnhub sent it: 200, or a client error passed on."""

    status: int
    body: bytes


class CallBudget(Protocol):
    """Where call slots come from: this process's window, or a cluster-wide one."""

    per_minute: int  # the key's limit (FINNHUB_REST_RATE), for /metrics

    async def acquire(self, deadline: float) -> None:
        """Wait for a slot until `deadline` (loop time); RestUnavailable if none by then."""

    def wait_estimate(self) -> float:
        """Seconds until a slot is likely free (for `Retry-After`)."""


class SlidingWindowBudget:
    """At most `per_minute` calls in any 60 s (`slack` seconds more, to be safe) and
    `per_second` in any second, FIFO."""

    def __init__(self, per_minute: int, per_second: int = 30, *, slack: float = 0.0) -> None:
        self.per_minute = per_minute
        self._minute = MINUTE + slack
        self._windows = ((per_minute, self._minute), (per_second, 1.0))
        self._calls: deque[float] = deque()  # loop times of the calls of the last minute
        self._turn = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order

    def _wait(self, now: float) -> float:
        while self._calls and self._calls[0] <= now - self._minute:
            self._calls.popleft()
        wait = 0.0
        for limit, span in self._windows:
            recent = self._calls
            if span < self._minute:
                recent = deque(t for t in self._calls if t > now - span)
            if len(recent) >= limit:
                wait = max(wait, recent[len(recent) - limit] + span - now)
        return wait

    async def acquire(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline), self._turn:
                while True:  # a deadline to wait for, not an event
                    wait = self._wait(loop.time())
                    if wait <= 0:
                        break
                    await asyncio.sleep(wait)
                self._calls.append(loop.time())
        except TimeoutError:
            raise RestUnavailable("the REST budget is spent", self.wait_estimate()) from None

    def wait_estimate(self) -> float:
        return max(self._wait(asyncio.get_running_loop().time()), 1.0)

    def free(self) -> int:
        """Calls that could go now, in this minute's window (the poller's headroom)."""
        self._wait(asyncio.get_running_loop().time())  # forgets the calls aged out
        return max(0, self.per_minute - len(self._calls))


class FinnhubRest:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        budget: CallBudget,
        *,
        request_timeout: float = 10.0,
        backoff_cap: float = 30.0,
        max_in_flight: int = 4,
    ) -> None:
        self.state: RestState = "ok"
        self.calls = 0
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self.budget = budget
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._backoff_cap = backoff_cap
        self._paused_until = 0.0  # after a 429 or a refused key, no call before this time
        self._pause_reason = ""
        # A few calls at once: a page of 50 tickers loads fast, and a 429 can only catch
        # the few already on their way.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FinnhubRest:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        body = await self.get("/quote", {"symbol": symbol}, deadline)
        try:
            return parse_quote(body)
        except ValueError:
            raise RestUnavailable("Finnhub sent a malformed quote") from None

    async def market_status(self, exchange: str, deadline: float) -> MarketStatus:
        body = await self.get("/stock/market-status", {"exchange": exchange}, deadline)
        try:
            return parse_market_status(body, exchange)
        except ValueError:
            raise RestUnavailable("Finnhub sent a malformed market status") from None

    async def get(self, path: str, params: Params, deadline: float) -> Any:
        """One call's JSON, within the budget, retried until `deadline` (loop time):
        waiting for a turn, the call itself and its retries all end by then."""
        return await self._within(path, params, deadline, raw=False)

    async def forward(self, path: str, params: Params, deadline: float) -> RestAnswer:
        """One call's answer as Finnhub sent it (for the REST mirror): 200, or a client
        error (4xx but 401 and 429) passed on; within the budget and `deadline` as `get`."""
        answer: RestAnswer = await self._within(path, params, deadline, raw=True)
        return answer

    async def _within(self, path: str, params: Params, deadline: float, *, raw: bool) -> Any:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._get(path, params, deadline, raw)
        except TimeoutError:
            raise RestUnavailable("no answer from Finnhub in time", 1.0) from None

    async def _get(self, path: str, params: Params, deadline: float, raw: bool) -> Any:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if self._paused_until > loop.time():
                if self._paused_until >= deadline:
                    raise RestUnavailable(self._pause_reason, self._paused_until - loop.time())
                await asyncio.sleep(self._paused_until - loop.time())
            async with self._in_flight:
                if self._paused_until > loop.time():
                    continue  # paused while we waited for our turn: wait for that first
                await self.budget.acquire(deadline)
                retry = await self._call_once(path, params, raw)
            if not isinstance(retry, _Retry):
                return retry
            attempt += 1
            delay = min(self._backoff_cap, 0.5 * 2**attempt) * (0.5 + random.random() / 2)
            delay = max(delay, retry.after)
            if loop.time() + delay >= deadline:
                raise RestUnavailable(retry.why, delay)
            await asyncio.sleep(delay)

    async def _call_once(self, path: str, params: Params, raw: bool) -> Any:
        assert self._session is not None, "use `async with FinnhubRest(...)`"
        self.calls += 1
        headers = {"X-Finnhub-Token": self._api_key}
        try:
            url = self._base + path
            async with self._session.get(
                url, params=params, headers=headers, allow_redirects=False
            ) as answer:
                if 300 <= answer.status < 400:
                    logger.warning(
                        "Finnhub REST answered a redirect status=%d path=%s; not followed "
                        "(the key is never sent elsewhere): check FINNHUB_REST_URL",
                        answer.status,
                        path,
                    )
                    self._set_state("unreachable")
                    raise RestUnavailable(f"Finnhub answered HTTP {answer.status} (a redirect)")
                if answer.status == 200:
                    body = (
                        RestAnswer(200, await _read_capped(answer))
                        if raw
                        else await answer.json(content_type=None)
                    )
                    self._set_state("ok")
                    return body
                if answer.status == 429:
                    after = _retry_after(answer.headers.get("Retry-After"))
                    self._pause(after, "rate limited by Finnhub")
                    self._set_state("rate_limited")
                    return _Retry("rate limited by Finnhub", after)
                if raw and 400 <= answer.status < 500 and answer.status not in (401, 429):
                    # The caller's own mistake or a premium endpoint: not the key's.
                    return RestAnswer(answer.status, await _read_capped(answer))
                if answer.status in (401, 403):
                    # Asking again at once would only spend the budget on refusals.
                    self._pause(MINUTE, "Finnhub refused the API key")
                    self._set_state("unauthorized")
                    raise RestUnavailable("Finnhub refused the API key", MINUTE)
                self._set_state("unreachable")
                return _Retry(f"Finnhub answered HTTP {answer.status}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise_if_cancelling(exc)
            self._set_state("unreachable")
            return _Retry(f"Finnhub unreachable ({type(exc).__name__})")

    def _pause(self, seconds: float, reason: str) -> None:
        self._paused_until = asyncio.get_running_loop().time() + seconds
        self._pause_reason = reason

    def _set_state(self, state: RestState) -> None:
        if state != self.state:
            if state == "unauthorized":
                logger.error("Finnhub REST refused the API key: check FINNHUB_API_KEY")
            elif state != "ok":
                logger.warning("Finnhub REST state=%s", state)
            else:
                logger.info("Finnhub REST state=ok")
            self.state = state


@dataclass(frozen=True)
class _Retry:
    why: str
    after: float = 0.0


async def _read_capped(answer: aiohttp.ClientResponse) -> bytes:
    """The answer's body; RestUnavailable (asking again would not help) past
    MAX_ANSWER_BYTES."""
    body = bytearray()
    async for chunk in answer.content.iter_chunked(65_536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise RestUnavailable("Finnhub's answer is too large to pass on")
    return bytes(body)


def _retry_after(header: str | None) -> float:
    try:
        return max(float(header), 1.0) if header else MINUTE
    except ValueError:
        return MINUTE
