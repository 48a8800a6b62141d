"""Finnhub's REST API (`/quote`, `/stock/market-status`, and the calls the REST mirror
forwards: `forward`), always within the key's budget: the provider's `ProviderRest`
(market_data/provider.py).

One aiohttp `ClientSession` for the process; the key travels only in the
`X-Finnhub-Token` header, never in a URL that could be logged. Every call first takes
a slot from a `CallBudget` (market_data/rest_budget.py: a sliding window under the
plan, with Finnhub's 30 calls a second). A 429 pauses every call
(honouring `Retry-After`), a 401/403 marks the REST side unauthorized (logged once),
network errors and 5xx are retried with backoff, all within the caller's deadline.
Redirects are never followed: the key header would go wherever the `Location` points,
so a 3xx is an error (logged with its status, not where it pointed). A forwarded call's
answer is passed on as Finnhub sent it (its bytes, and its status for a client error
such as 403 "You don't have access to this resource", which says nothing of the key).
No answer is `UpstreamUnavailable`, in words that name no provider (they may reach a
client through `GET /quote`); the log lines name Finnhub and its settings.

This module never logs the key or a URL carrying it, and knows nothing of clients.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from stock_gateway.finnhub.wire import parse_market_status, parse_quote
from stock_gateway.market_data.model import MarketStatus, Quote
from stock_gateway.market_data.provider import (
    CallBudget,
    Params,
    RestAnswer,
    RestState,
    UpstreamUnavailable,
)
from stock_gateway.market_data.rest_budget import MINUTE
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger

logger = get_logger(__name__)

MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a forwarded answer larger than this is refused


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
            raise UpstreamUnavailable("the upstream sent a malformed quote") from None

    async def market_status(self, exchange: str, deadline: float) -> MarketStatus:
        body = await self.get("/stock/market-status", {"exchange": exchange}, deadline)
        try:
            return parse_market_status(body, exchange)
        except ValueError:
            raise UpstreamUnavailable("the upstream sent a malformed market status") from None

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
            raise UpstreamUnavailable("no answer from the upstream in time", 1.0) from None

    async def _get(self, path: str, params: Params, deadline: float, raw: bool) -> Any:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if self._paused_until > loop.time():
                if self._paused_until >= deadline:
                    raise UpstreamUnavailable(self._pause_reason, self._paused_until - loop.time())
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
                raise UpstreamUnavailable(retry.why, delay)
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
                    raise UpstreamUnavailable(
                        f"the upstream answered HTTP {answer.status} (a redirect)"
                    )
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
                    self._pause(after, "rate limited by the upstream")
                    self._set_state("rate_limited")
                    return _Retry("rate limited by the upstream", after)
                if raw and 400 <= answer.status < 500 and answer.status not in (401, 429):
                    # The caller's own mistake or a premium endpoint: not the key's.
                    return RestAnswer(answer.status, await _read_capped(answer))
                if answer.status in (401, 403):
                    # Asking again at once would only spend the budget on refusals.
                    self._pause(MINUTE, "the upstream refused the API key")
                    self._set_state("unauthorized")
                    raise UpstreamUnavailable("the upstream refused the API key", MINUTE)
                self._set_state("unreachable")
                return _Retry(f"the upstream answered HTTP {answer.status}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise_if_cancelling(exc)
            self._set_state("unreachable")
            return _Retry(f"the upstream is unreachable ({type(exc).__name__})")

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
    """The answer's body; UpstreamUnavailable (asking again would not help) past
    MAX_ANSWER_BYTES."""
    body = bytearray()
    async for chunk in answer.content.iter_chunked(65_536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise UpstreamUnavailable("the upstream's answer is too large to pass on")
    return bytes(body)


def _retry_after(header: str | None) -> float:
    try:
        return max(float(header), 1.0) if header else MINUTE
    except ValueError:
        return MINUTE
