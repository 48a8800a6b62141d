"""Quotes on the way to subscribers: a new subscriber's quote, sent when it comes.

`QuoteDelivery.send(client, symbol, fetch=...)` sends a cached quote at once, or (when
the symbol has no live price) asks the `QuoteService` and sends the answer to every
client that asked while that fetch was under way and still holds the symbol: one
fetch, one frame, many clients. A fetch that fails in time becomes a
`quote_unavailable` error for those clients; "no quote" (an unknown symbol) sends
nothing.

This module never fetches anything itself (the `QuoteService` does) and never blocks:
answers arrive by future callbacks on the event loop.
"""

from __future__ import annotations

import asyncio
import functools

import protocol
from delivery.outbox import ClientConnection
from market_data.model import Quote
from market_data.quotes import QuoteService

Waiting = tuple["asyncio.Future[Quote | None]", set[ClientConnection]]


class QuoteDelivery:
    def __init__(self, quotes: QuoteService) -> None:
        self._quotes = quotes
        self._waiting: dict[str, Waiting] = {}  # symbol -> the fetch under way, its clients

    def send(self, client: ClientConnection, symbol: str, *, fetch: bool) -> None:
        """The symbol's quote: at once if cached; with `fetch`, fetched (one fetch for
        every client waiting) and sent when it comes."""
        if not fetch:
            cached = self._quotes.cached(symbol)
            if cached is not None:
                client.send(protocol.quote_message(symbol, cached))
            return
        future = self._quotes.request(symbol, client.owner)
        if future.done():
            _deliver(symbol, future, {client})
            return
        waiting = self._waiting.get(symbol)
        if waiting is None or waiting[0] is not future:  # a new fetch: its own waiters
            waiting = self._waiting[symbol] = (future, set())
            future.add_done_callback(functools.partial(self._came, symbol, waiting))
        waiting[1].add(client)

    def _came(self, symbol: str, waiting: Waiting, _done: object) -> None:
        if self._waiting.get(symbol) is waiting:
            del self._waiting[symbol]
        _deliver(symbol, waiting[0], waiting[1])


def _deliver(
    symbol: str, future: asyncio.Future[Quote | None], clients: set[ClientConnection]
) -> None:
    waiting = [client for client in clients if symbol in client.symbols]  # still there
    failure = future.exception()
    if failure is not None:
        retry = getattr(failure, "retry_after", 1.0)
        frame = protocol.error_message(
            "quote_unavailable",
            f"no quote could be fetched in time; live prices follow when the symbol "
            f"trades (try again in {max(1, round(retry))} s)",
            [symbol],
        )
    elif (quote := future.result()) is not None:
        frame = protocol.quote_message(symbol, quote)
    else:
        return  # Finnhub has no quote for this symbol: nothing to show
    for client in waiting:
        client.send(frame)
