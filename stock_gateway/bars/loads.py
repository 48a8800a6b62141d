"""Loading a symbol's stored bars into the book beside the live feed, never on its path.

When a symbol is first carried (its first trade, or a `subscribe_bars`), its stored
bars are read into the book so a late trade revises the stored bar instead of
replacing it. A store can be slow or hung (PostgreSQL stopped, SQLite locked by another
process), and the upstream reader must never wait for it: `hold_back(trades)` returns
at once the trades that may count now, and keeps those of a symbol whose load is under
way (at most MAX_HELD_TRADES in all; past that they count at once, as if the store had
nothing for them); the load counts them after the stored bars, in arrival order, when
it ends. Prices never wait: only the bars of a loading symbol do.

A load is bounded: LOAD_SECONDS for all the symbols it reads (each read bounded by the
recorder, bars/recorder.py `stored`); a store that fails or does not answer in time
leaves the rest of the symbols to start fresh from the trades they get (the recorder
says `degraded`). `load()` is for a `subscribe_bars`, which waits for the stored bars
before sending the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from stock_gateway.bars.book import Bar, BarBook, Interval
from stock_gateway.market_data.model import Trade

LOAD_SECONDS = 5.0  # one load's reads in all; the held trades wait at most this long
# Trades waiting for their symbols' loads: one slice of the feed's (delivery/bar_delivery.py
# TRADES_PER_SLICE), so counting them when a load ends costs the loop no more than one.
MAX_HELD_TRADES = 5_000

Stored = dict[Interval, tuple[list[Bar], Bar | None]]
ReadStored = Callable[[str, int, float], Awaitable[Stored | None]]
CountTrades = Callable[[list[Trade]], None]


@dataclass
class _Load:
    """One load of some symbols: set once their stored bars (if any) are in the book."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    held: list[Trade] = field(default_factory=list)  # their trades that came meanwhile
    count: CountTrades | None = None  # where the held trades go once it ends


def restore(book: BarBook, symbol: str, stored: Stored | None) -> None:
    """Stored bars into the book beside what it holds (None: the store had none to give)."""
    for interval, (closed, open_bar) in (stored or {}).items():
        book.restore(symbol, interval, closed, open_bar)


class StoredBarLoads:
    def __init__(
        self, read: ReadStored, restore: Callable[[BarBook, str, Stored | None], None] = restore
    ) -> None:
        self._read = read  # (symbol, history, timeout) -> its stored bars, None if failed
        self._restore = restore  # called for every symbol a load started with
        self._loaded: set[str] = set()  # symbols whose stored bars are in the book
        self._loading: dict[str, _Load] = {}  # symbol -> the load under way
        self._tasks: set[asyncio.Task[None]] = set()  # loads under way (each ends by itself)
        self.held = 0  # trades waiting for a load now
        self.counted_early = 0  # trades counted before their load ended (MAX_HELD_TRADES)

    def forget(self, symbol: str) -> None:
        """The book dropped `symbol`: load its stored bars again when it comes back."""
        self._loaded.discard(symbol)

    def start(self, book: BarBook, symbols: Iterable[str], history: int) -> list[_Load]:
        """Start loading the symbols not loaded yet; the loads (new or under way) of them."""
        symbols = set(symbols)
        fresh = [symbol for symbol in symbols if symbol not in self._loaded]
        if fresh:
            self._loaded.update(fresh)
            load = _Load()
            self._loading.update(dict.fromkeys(fresh, load))
            # Owned here, not by the caller: a client closing mid-subscribe must not leave
            # the load half done while others (and held trades) wait for it.
            task = asyncio.create_task(self._read_into(book, fresh, history, load))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        loads = {id(load): load for load in map(self._loading.get, symbols) if load is not None}
        return list(loads.values())

    async def load(self, book: BarBook, symbols: Iterable[str], history: int) -> None:
        """Wait until the symbols' stored bars are in the book (at most a load's bound)."""
        for load in self.start(book, symbols, history):
            await load.done.wait()

    async def wait(self, symbols: Iterable[str]) -> None:
        """Wait for the loads under way of `symbols` (starting none)."""
        for load in {id(load): load for load in map(self._loading.get, symbols) if load}.values():
            await load.done.wait()

    def hold_back(
        self, book: BarBook, trades: list[Trade], history: int, count: CountTrades
    ) -> list[Trade]:
        """The trades that may count now. Those of a symbol whose stored bars are still
        loading are kept and passed to `count` when the load ends; nothing here waits."""
        if not self.start(book, {trade.symbol for trade in trades}, history):
            return trades
        now: list[Trade] = []
        for trade in trades:
            load = self._loading.get(trade.symbol)
            if load is None:
                now.append(trade)
            elif self.held >= MAX_HELD_TRADES:
                self.counted_early += 1  # bounded: counted fresh, the store's bar kept apart
                now.append(trade)
            else:
                load.count = count
                load.held.append(trade)
                self.held += 1
        return now

    async def _read_into(
        self, book: BarBook, symbols: list[str], history: int, load: _Load
    ) -> None:
        deadline = asyncio.get_running_loop().time() + LOAD_SECONDS
        failed = False
        try:
            for symbol in symbols:
                remaining = deadline - asyncio.get_running_loop().time()
                stored = None
                if not failed and remaining > 0:
                    stored = await self._read(symbol, history, remaining)
                failed = stored is None  # failed or out of time: the rest start afresh
                self._restore(book, symbol, stored)
        finally:
            for symbol in symbols:
                if self._loading.get(symbol) is load:  # not a later load's
                    del self._loading[symbol]
            held, load.held = load.held, []
            self.held -= len(held)
            if held and load.count is not None:
                load.count(held)  # after the stored bars, before any later trade
            load.done.set()
