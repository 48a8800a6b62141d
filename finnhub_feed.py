"""The one upstream connection: an aiohttp WebSocket to Finnhub's trade stream.

`FinnhubFeed.run()` connects, keeps the upstream's subscriptions equal to the
`SymbolInterest` it follows, parses trade frames once and hands valid trades to its
`UpstreamListener` (a relay: relay/local.py, or a cluster leader's publisher). It is
the gateway's one `Upstream` (market_data/upstream.py). When the socket drops it
reconnects forever with jittered exponential backoff, and resubscribes every wanted
symbol in one burst.

Subscriptions are reconciled, not replayed: the hub only edits the wanted set, and
one coroutine per connection sends the difference between "wanted" and "sent on this
socket", paced by a token bucket (Finnhub throttles or bans keys that churn).
Whatever order clients come and go in, the upstream ends up carrying exactly the
wanted symbols. The handshake has a deadline: an upstream that accepts TCP and never
answers is retried like one that refuses.

This module must never let the API key out: it travels only as the `token` query
parameter of the handshake, and every URL or exception text that is logged goes
through `redact()` first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
import orjson

from stock_gateway.finnhub.wire import redact
from stock_gateway.market_data.model import SymbolInterest, UpstreamState
from stock_gateway.market_data.trade_wire import UndecodableMessage, decode, parse_trades
from stock_gateway.market_data.upstream import UpstreamCounters, UpstreamListener
from stock_gateway.runtime.backoff import Backoff
from stock_gateway.runtime.cancellation import raise_if_cancelling
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.token_bucket import TokenBucket

logger = get_logger(__name__)

# Finnhub's "Subscribing to too many symbols" names no symbol: it refuses the latest
# subscribes. Such an error is blamed on the newest not-yet-blamed subscribe sent within
# this many seconds; any other error that names no symbol we carry is not attributed.
BLAME_WINDOW_SECONDS = 5.0
TOO_MANY_SYMBOLS = "too many symbols"


class FinnhubFeed:
    """Owns the upstream socket; the interest it follows is its only input."""

    def __init__(
        self,
        url: str,
        api_key: str,
        interest: SymbolInterest,
        *,
        backoff: Backoff,
        reset_backoff_after: float,
        idle_timeout: float,
        handshake_timeout: float,
        subscribe_rate: float,
        subscribe_burst: int,
        trade_max_age: float,
        trade_max_ahead: float,
        max_symbols: int | None,
    ) -> None:
        self.state: UpstreamState = "connecting"
        self.counters = UpstreamCounters()
        self._url = url
        self._api_key = api_key
        self._backoff = backoff
        self._reset_backoff_after = reset_backoff_after
        # Finnhub pings about once a minute even when no trades flow: silence longer
        # than this means a dead (half-open) connection.
        self._idle_timeout = idle_timeout
        self._handshake_timeout = handshake_timeout
        # The subscribe budget belongs to the key, across reconnects.
        self._pacer = TokenBucket(subscribe_rate, subscribe_burst)
        self._trade_bounds = {"max_age": trade_max_age, "max_ahead": trade_max_ahead}
        self.interest = interest
        # Never more on the socket than this, whatever order changes come in.
        self._max_symbols = max_symbols
        self._sent: set[str] = set()  # subscribed on the current socket
        self._recent_subscribes: deque[tuple[str, float]] = deque()
        self.blame_window = BLAME_WINDOW_SECONDS

    # -- the connection loop ---------------------------------------------------------------

    async def run(self, listener: UpstreamListener) -> None:
        """Stay connected until cancelled."""
        # A new run (a new leadership, a restart after a crash) has no socket yet; a
        # listener that last heard "connected" from an earlier run must hear otherwise.
        self._set_state(listener, "connecting")
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                connected_at: float | None = None
                try:
                    ws = await self._connect(session)
                    async with ws:
                        connected_at = loop.time()
                        logger.info("upstream connected url=%s", redact(self._url, self._api_key))
                        self._set_state(listener, "connected")
                        await self._stream(ws, listener)
                        logger.warning("upstream closed the socket code=%s", ws.close_code)
                except aiohttp.WSServerHandshakeError as exc:
                    refused_key = exc.status in (401, 403)
                    logger.warning(
                        "upstream refused the handshake status=%s%s",
                        exc.status,
                        " (the API key was rejected: check FINNHUB_API_KEY)" if refused_key else "",
                    )
                    if refused_key:
                        self._set_state(listener, "unauthorized")
                except TimeoutError as exc:
                    raise_if_cancelling(exc)
                    logger.warning(
                        "upstream handshake did not finish within %gs; retrying",
                        self._handshake_timeout,
                    )
                except (aiohttp.ClientError, OSError) as exc:
                    raise_if_cancelling(exc)  # our own stop, seen as a connection error
                    logger.warning(
                        "upstream connection failed error=%s detail=%s",
                        type(exc).__name__,
                        redact(str(exc), self._api_key),
                    )
                self._sent.clear()
                if self.state != "unauthorized":
                    self._set_state(listener, "reconnecting")
                if (
                    connected_at is not None
                    and loop.time() - connected_at >= self._reset_backoff_after
                ):
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                self.counters.reconnects += 1
                logger.info("upstream reconnecting in %.2fs", delay)
                await asyncio.sleep(delay)

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        """TCP, TLS and the WebSocket handshake, all within the handshake timeout."""
        async with asyncio.timeout(self._handshake_timeout):
            return await session.ws_connect(
                self._url,
                params={"token": self._api_key},
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=self._idle_timeout, ws_close=5),
            )

    def _set_state(self, listener: UpstreamListener, state: UpstreamState) -> None:
        if state != self.state:
            self.state = state
            listener.upstream_state_changed(state)

    async def _stream(
        self, ws: aiohttp.ClientWebSocketResponse, listener: UpstreamListener
    ) -> None:
        self._sent.clear()  # a new socket: resubscribe everything wanted, in one burst
        self._recent_subscribes.clear()
        syncer = asyncio.create_task(self._sync_subscriptions(ws), name="finnhub-subscriptions")
        try:
            async for message in self._messages(ws):
                if message.type is aiohttp.WSMsgType.TEXT:
                    await self._handle_text(message.data, listener)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    logger.warning(
                        "upstream socket error=%s",
                        redact(repr(ws.exception()), self._api_key),
                    )
                    break
                else:
                    self.counters.malformed += 1
                    logger.warning(
                        "upstream sent an unexpected %s frame; skipped", message.type.name
                    )
        finally:
            syncer.cancel()
            await asyncio.wait([syncer])

    async def _messages(
        self, ws: aiohttp.ClientWebSocketResponse
    ) -> AsyncIterator[aiohttp.WSMessage]:
        """The socket's messages until it closes or stays silent past the idle timeout."""
        try:
            async for message in ws:
                yield message
        except TimeoutError:
            logger.warning("upstream silent for %.0fs; reconnecting", self._idle_timeout)

    async def _sync_subscriptions(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Keep this socket's subscriptions equal to the interest, one paced frame at a
        time; each change is re-checked after waiting, so a symbol that came and went
        meanwhile costs nothing. Unsubscribes go first, to make room at Finnhub's cap."""
        try:
            while True:
                wanted = self.interest.symbols
                changes = [(symbol, False) for symbol in sorted(self._sent - wanted)]
                changes += [(symbol, True) for symbol in sorted(wanted - self._sent)]
                sent = 0
                for symbol, subscribe in changes:
                    if self._needed(symbol, subscribe):
                        await self._paced()
                    if self._needed(symbol, subscribe):  # not reconciled away meanwhile
                        await self._send_change(ws, symbol, subscribe)
                        sent += 1
                if self.interest.symbols == self._sent or not sent:  # done, or full
                    await self.interest.wait_changed()
        except (aiohttp.ClientError, ConnectionError):
            pass  # the socket is closing; the reader sees it and the loop reconnects

    def _needed(self, symbol: str, subscribe: bool) -> bool:
        if subscribe and self._max_symbols is not None and len(self._sent) >= self._max_symbols:
            return False  # full: the next pass unsubscribes what the interest dropped first
        return (symbol in self.interest) == subscribe and (symbol in self._sent) != subscribe

    def feed_of(self, symbol: str) -> str:
        """Everything this socket carries is live (market_data/planned_upstream.py says
        otherwise for symbols that only take turns on it)."""
        return "live"

    async def _paced(self) -> None:
        """Wait for the subscribe budget (a deadline, not an event: nothing to await)."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._pacer.take(loop.time())
            if wait == 0:
                return
            await asyncio.sleep(wait)

    async def _send_change(
        self, ws: aiohttp.ClientWebSocketResponse, symbol: str, subscribe: bool
    ) -> None:
        if subscribe:
            self._sent.add(symbol)
            now = asyncio.get_running_loop().time()
            self._recent_subscribes.append((symbol, now))
            while self._recent_subscribes[0][1] < now - self.blame_window:
                self._recent_subscribes.popleft()
        else:
            self._sent.discard(symbol)
        kind = "subscribe" if subscribe else "unsubscribe"
        self.counters.frames_sent += 1
        await ws.send_str(orjson.dumps({"type": kind, "symbol": symbol}).decode())

    async def _handle_text(self, data: str, listener: UpstreamListener) -> None:
        received_at = time.perf_counter()
        self.counters.messages += 1
        try:
            message = decode(data)
        except UndecodableMessage:
            self._skip("not JSON")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "trade":
            trades, skipped = parse_trades(message.get("data"), **self._trade_bounds)
            if skipped:
                self._skip(f"{skipped} malformed or implausible trade(s)")
            self.counters.trades += len(trades)
            if trades:
                await listener.trades_received(trades, received_at)
        elif kind == "ping":
            pass
        elif kind == "error":
            # Logged for the operator, key removed before anything is cut; clients get
            # fixed words from the hub, never this text.
            text = redact(str(message.get("msg", "")), self._api_key)[:200].strip()
            symbol = self._blame(text)
            logger.warning("upstream error msg=%r symbol=%s", text, symbol)
            if symbol is not None:
                self._sent.discard(symbol)  # Finnhub did not take it: nothing to unsubscribe
            listener.upstream_refused(symbol)
        else:
            self._skip(f"unknown type {redact(str(kind), self._api_key)[:40]!r}")

    def _skip(self, why: str) -> None:
        self.counters.malformed += 1
        logger.warning("upstream message skipped reason=%s total=%d", why, self.counters.malformed)

    def _blame(self, text: str) -> str | None:
        """The symbol an upstream error is about, if it can be told; None otherwise."""
        padded = f" {text} "
        named = [symbol for symbol in self._sent if f" {symbol} " in padded]
        if named:
            return max(named, key=len)
        if TOO_MANY_SYMBOLS not in text.lower():
            return None
        horizon = asyncio.get_running_loop().time() - self.blame_window
        if self._recent_subscribes and self._recent_subscribes[-1][1] >= horizon:
            return self._recent_subscribes.pop()[0]
        return None
