"""Quotes on the way to subscribers: a new subscriber's quote, sent when it comes, and a
new previous close to every subscriber of its symbol.

`QuoteDelivery.send(client, symbol, quiet=...)` sends a fresh cached quote at once, or
asks the `QuoteService` (charged to the client's owner and address) and sends the
answer to every client that asked while that fetch was under way and still holds the
symbol: one fetch, one frame, many clients. Only a live symbol's subscriber asks
(`Feeds.feed_of`): one past the socket is priced by the feed planner (a turn, then a
poll whose quote reaches every subscriber), and asks for each of hundreds of new
symbols would spend the whole REST budget on first quotes; it is sent the symbol's last
quote at once, however old. While the socket is full (`Feeds.rotating`) a `quiet`
subscriber does not ask either when its symbol's previous close is known: its snapshot
carries the day's change, and REST is what prices the symbols past the socket (a
session change still refreshes every previous close). A fetch that fails in time
becomes a `quote_unavailable` error for those clients, except `quiet` ones (they have
a live snapshot already, so a stale quote being refreshed is no error to them); "no
quote" (an unknown symbol) sends nothing. At a market-session change `refresh` has the
carried symbols' stale quotes fetched again, subscribed ones first; a quote that
brings a new previous close (a new trading day) goes to every subscriber of its
symbol.

A quote older than the symbol's last live price (`LastPrices.timestamp`) is sent to nobody:
every subscriber has that price already (as its snapshot or as an update), or has it
coming, and a client that shows the last message it got would go back to the older
price. Such a quote still fills the cache (previous close, the day's change).

Each client is told in its own dialect (its `Encoder`, delivery/encoders.py), the
frame encoded once per dialect; a dialect without quotes (Finnhub's) is told nothing.

This module never fetches anything itself (the `QuoteService` does) and never blocks:
answers arrive by future callbacks on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from stock_gateway.delivery.encoders import send_each
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.market_data.model import Quote
from stock_gateway.market_data.quotes import QuoteService

# The fetch under way, and its clients (each: whether a failure is no error to it).
Waiting = tuple["asyncio.Future[Quote | None]", dict[ClientConnection, bool]]


class LastPrices(Protocol):
    """When each symbol's last live price was traded (delivery/snapshots.py's LatestPrices)."""

    def timestamp(self, symbol: str) -> int | None: ...


class Feeds(Protocol):
    """How the feed planner serves each symbol (market_data/feed_plan.py's `FeedPlanner`;
    on a cluster, the leader's plan as this node learned it: cluster/feeds.py)."""

    @property
    def rotating(self) -> bool: ...  # more symbols wanted than the socket carries

    def feed_of(self, symbol: str) -> str: ...


class QuoteDelivery:
    def __init__(
        self,
        quotes: QuoteService,
        subscribers_of: Callable[[str], Iterable[ClientConnection]],
        last_prices: LastPrices,
        feeds: Feeds,
    ) -> None:
        self._quotes = quotes
        self._feeds = feeds
        self._subscribers_of = subscribers_of
        self._last_prices = last_prices
        self._waiting: dict[str, Waiting] = {}  # symbol -> the fetch under way, its clients
        quotes.on_new_close(self._new_close)

    def send(self, client: ClientConnection, symbol: str, *, quiet: bool) -> None:
        """The symbol's quote: at once if fresh in the cache, else fetched (one fetch for
        every client waiting) and sent when it comes, if the client needs one."""
        if not self._quotes.fresh(symbol):
            if self._feeds.feed_of(symbol) != "live":
                # The planner prices it (its polls reach every subscriber); meanwhile the
                # last quote there is, however old: a polled price is a delayed one.
                last = self._quotes.last(symbol)
                if last is not None and not self._outdated(symbol, last):
                    send_each((client,), lambda encoder: encoder.quote(symbol, last))
                return
            if quiet and self._feeds.rotating and self._quotes.previous_close(symbol):
                return  # its snapshot is a live price, with the day's change
        future = self._quotes.request(symbol, (client.owner, client.address))
        if future.done():
            self._deliver(symbol, future, {client: quiet})
            return
        waiting = self._waiting.get(symbol)
        if waiting is None or waiting[0] is not future:  # a new fetch: its own waiters
            waiting = self._waiting[symbol] = (future, {})
            future.add_done_callback(functools.partial(self._came, symbol, waiting))
        waiting[1][client] = quiet and waiting[1].get(client, True)

    def refresh(self, subscribed: Collection[str], carried: Iterable[str]) -> None:
        """A market-session change may begin a new trading day, with a new previous close
        behind every update's change: quotes older than QUOTE_TTL are fetched again."""
        others = sorted(set(carried).difference(subscribed))
        self._quotes.refresh([*sorted(subscribed), *others])

    def _new_close(self, symbol: str, quote: Quote) -> None:
        """A quote with a new previous close: to subscribers not already waiting for it."""
        if self._outdated(symbol, quote):
            return  # the live price carries the new close in its change fields
        waiting = self._waiting.get(symbol)
        told = [
            client
            for client in self._subscribers_of(symbol)
            if waiting is None or client not in waiting[1]
        ]
        send_each(told, lambda encoder: encoder.quote(symbol, quote))

    def _came(self, symbol: str, waiting: Waiting, _done: object) -> None:
        if self._waiting.get(symbol) is waiting:
            del self._waiting[symbol]
        self._deliver(symbol, waiting[0], waiting[1])

    def _outdated(self, symbol: str, quote: Quote) -> bool:
        last_price_at = self._last_prices.timestamp(symbol)
        return last_price_at is not None and quote.timestamp < last_price_at

    def _deliver(
        self,
        symbol: str,
        future: asyncio.Future[Quote | None],
        clients: dict[ClientConnection, bool],
    ) -> None:
        waiting = [client for client in clients if symbol in client.symbols]  # still there
        failure = future.exception()
        if failure is not None:
            waiting = [client for client in waiting if not clients[client]]
            retry: float = getattr(failure, "retry_after", 1.0)
            send_each(waiting, lambda encoder: encoder.quote_unavailable(symbol, retry))
        elif (quote := future.result()) is not None:
            if self._outdated(symbol, quote):
                return  # older than the live price its subscribers have or will have
            send_each(waiting, lambda encoder: encoder.quote(symbol, quote))
        # else: Finnhub has no quote for this symbol: nothing to show


def quote_delivery(
    quotes: QuoteService | None,
    subscribers_of: Callable[[str], Iterable[ClientConnection]],
    last_prices: LastPrices,
    feeds: Feeds,
) -> QuoteDelivery | None:
    """The hub's quote delivery; None without quotes (REST_ENABLED=false)."""
    return None if quotes is None else QuoteDelivery(quotes, subscribers_of, last_prices, feeds)
