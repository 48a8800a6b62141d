"""Fakes of the hub tests: a socket and a writer that record what the hub sends, the one
place a Hub is built, and how long an awaited event may take."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

from finnhub_feed import FinnhubFeed
from hub import Hub
from stock_gateway.access.capacity import UpstreamCapacity
from stock_gateway.access.holds import SymbolHolds
from stock_gateway.bars.book import BarBook
from stock_gateway.delivery.outbox import OutboxLimits
from stock_gateway.delivery.snapshots import LatestPrices
from stock_gateway.delivery.stats import Observer
from stock_gateway.delivery.subscribers import Subscribers
from stock_gateway.market_data.model import SymbolInterest
from stock_gateway.market_data.quote_polls import PollPace
from stock_gateway.market_data.quotes import QuoteService, QuoteSource
from stock_gateway.market_data.rest_budget import SlidingWindowBudget
from stock_gateway.protocol import Frame
from stock_gateway.rest_shares import rest_shares
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.backoff import Backoff
from stock_gateway.settings import Settings

# The settings' own defaults: objects the tests build get what a default gateway has.
DEFAULTS = Settings()


def make_book(**changed: Any) -> BarBook:
    """A bar book as a default gateway's (BAR_HISTORY, BAR_GRACE), with `changed`."""
    values: dict[str, Any] = {"history": DEFAULTS.bar_history, "grace": DEFAULTS.bar_grace}
    return BarBook(**(values | changed))


WAIT = 1.0  # the longest any awaited event may take before a test fails


class FakeSocket:
    """A `ClientSocket`: records texts, closes and aborts. While `reading` is clear it
    behaves like a client that stopped reading: sends and the close both block."""

    def __init__(self, *, reading: bool = True, changed: asyncio.Event | None = None) -> None:
        self.texts: list[str] = []
        self.closes: list[tuple[int, str]] = []
        self.aborts = 0
        self.events: list[str] = []  # "close", "closed", "abort", in the order they happened
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()
        self.send_started = asyncio.Event()
        self.close_called = asyncio.Event()
        self.aborted = asyncio.Event()
        self.changed = changed if changed is not None else asyncio.Event()  # on any of these

    async def send(self, frame: Frame) -> None:
        self.send_started.set()
        await self.reading.wait()
        self.texts.append(frame.text)
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.events.append("close")
        self.close_called.set()
        self.changed.set()
        await self.reading.wait()
        self.events.append("closed")

    def abort(self) -> None:
        self.aborts += 1
        self.events.append("abort")
        self.aborted.set()
        self.changed.set()

    def queued_bytes(self) -> int:
        return 0


class FakeWriter:
    """A `FrameWriter`: `ready()` is toggled by the test; `write` records bytes and, with
    `fills_on_write`, makes it not ready (the backlog filled the send buffer)."""

    def __init__(self, *, ready: bool = True, fills_on_write: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fills_on_write = fills_on_write
        self._ready = asyncio.Event()
        if ready:
            self._ready.set()
        self.waiting = asyncio.Event()  # someone is blocked in wait_ready()
        self.changed = asyncio.Event()

    def ready(self) -> bool:
        return self._ready.is_set()

    def set_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.changed.set()
        if self.fills_on_write:
            self._ready.clear()

    async def wait_ready(self) -> None:
        if not self._ready.is_set():
            self.waiting.set()
        await self._ready.wait()

    def payloads(self) -> list[bytes]:
        return split_wire(b"".join(self.writes))

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(payload) for payload in self.payloads()]


def outbox_limits(**changed: Any) -> OutboxLimits:
    """A client's outbox bounds: the settings' defaults, but for what a test changes."""
    defaults = OutboxLimits(
        DEFAULTS.client_outbox_size,
        DEFAULTS.client_outbox_bytes,
        DEFAULTS.slow_consumer_timeout,
    )
    return dataclasses.replace(defaults, **changed)


def make_capacity(interest: SymbolInterest | None = None, **changed: Any) -> UpstreamCapacity:
    """An `UpstreamCapacity` with the settings' defaults, but for what a test changes."""
    options: dict[str, Any] = {
        "max_per_owner": DEFAULTS.max_symbols_per_address,
        "new_per_owner_hour": DEFAULTS.new_symbols_per_address,
        "linger": DEFAULTS.symbol_linger_seconds,
        "reject_for": DEFAULTS.rejected_symbol_seconds,
    }
    return UpstreamCapacity(
        interest if interest is not None else SymbolInterest(), **(options | changed)
    )


def make_feed(interest: SymbolInterest, url: str = "ws://127.0.0.1:9") -> FinnhubFeed:
    """A `FinnhubFeed` with the settings' defaults (tests that start none never dial)."""
    return FinnhubFeed(
        url,
        "unused",
        interest,
        backoff=Backoff(DEFAULTS.reconnect_initial_delay, DEFAULTS.reconnect_max_delay),
        reset_backoff_after=DEFAULTS.reconnect_reset_after,
        idle_timeout=DEFAULTS.upstream_idle_timeout,
        handshake_timeout=DEFAULTS.upstream_handshake_timeout,
        subscribe_rate=DEFAULTS.upstream_subscribe_rate,
        subscribe_burst=DEFAULTS.upstream_subscribe_burst,
        trade_max_age=DEFAULTS.trade_max_age,
        trade_max_ahead=DEFAULTS.trade_max_ahead,
        max_symbols=DEFAULTS.max_upstream_symbols,
    )


def make_budget(per_minute: int, **changed: Any) -> SlidingWindowBudget:
    """This process's REST budget over a default gateway's window (FINNHUB_REST_WINDOW),
    but for what a test changes."""
    return SlidingWindowBudget(per_minute, **({"window": DEFAULTS.finnhub_rest_window} | changed))


def make_quotes(source: QuoteSource, shares: Allowances, **changed: Any) -> QuoteService:
    """A `QuoteService` with the settings' defaults and their REST shares (rest_shares.py),
    but for what a test changes."""
    budget = rest_shares(DEFAULTS)
    options: dict[str, Any] = {
        "ttl": DEFAULTS.quote_ttl,
        "wait": DEFAULTS.quote_wait,
        "unknown_ttl": DEFAULTS.quote_unknown_ttl,
        "window": DEFAULTS.finnhub_rest_window,
        "lookups_per_minute": budget.lookups,
        "refreshes_per_minute": budget.refreshes,
        "polls": PollPace(budget.polls, DEFAULTS.finnhub_rest_window),
    }
    return QuoteService(source, shares, **(options | changed))


class AllLive:
    """Feeds while the socket carries every symbol (market_data/feed_plan.py)."""

    rotating = False

    def feed_of(self, symbol: str) -> str:
        return "live"


def make_hub(
    *,
    max_symbols_per_client: int = DEFAULTS.max_symbols_per_client,
    handoff_observer: Observer | None = None,
) -> Hub:
    """The one place a `Hub` is built (and `upstream_refused` called, below), so a change
    of its constructor is a change here."""
    latest = LatestPrices()
    # Refused symbols may be asked for again at once and a released one goes at once
    # (linger has tests of its own): these tests are about counts.
    capacity = make_capacity(reject_for=0, linger=0, on_release=latest.forget)
    holds = SymbolHolds(capacity, max_symbols_per_client=max_symbols_per_client)
    return Hub(
        holds,
        latest,
        Subscribers(),
        joined=lambda client, added: None,
        feeds=AllLive(),
        outbox=outbox_limits(),
        max_batch_bytes=DEFAULTS.max_batch_bytes,
        handoff_observer=handoff_observer,
    )


def split_wire(data: bytes) -> list[bytes]:
    """The payloads of concatenated unmasked WebSocket text frames (RFC 6455 5.2)."""
    payloads: list[bytes] = []
    at = 0
    while at < len(data):
        assert data[at] == 0x81, "not a final, unmasked text frame"
        length = data[at + 1]
        at += 2
        if length == 126:
            length = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8], "big")
            at += 8
        payloads.append(data[at : at + length])
        at += length
    assert at == len(data), "a frame is cut short"
    return payloads
