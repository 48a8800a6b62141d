"""What clients hear of the feed planner (market_data/feed_plan.py): a `feed` message
to every subscriber of a symbol whose feed changed, and each polled quote to the
subscribers of its symbol (unless older than the last live price they have).

Only clients of the gateway's own protocol (`/ws`, `/stream`) hear either: Finnhub's
dialect (`/`) has no such message and no quote, so nothing is invented for it; its
clients get the trades of live and sampled symbols as they come. Never blocks, never
fetches anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from stock_gateway import protocol
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.delivery.quotes import LastPrices
from stock_gateway.market_data.model import Quote


class FeedNotices:
    def __init__(
        self,
        subscribers_of: Callable[[str], Iterable[ClientConnection]],
        last_prices: LastPrices,
        priced: Callable[[str], None] = lambda symbol: None,
    ) -> None:
        self._subscribers_of = subscribers_of
        self._last_prices = last_prices
        self._priced = priced  # the planner hears of every polled price
        self.feed_messages = 0
        self.polled_quotes = 0

    def feeds_changed(self, changes: Mapping[str, str]) -> None:
        for symbol, feed in changes.items():
            frame = protocol.feed_message(symbol, feed)
            for client in self._subscribers_of(symbol):
                if client.trade_dialect is None:
                    client.send(frame)
                    self.feed_messages += 1

    def polled(self, symbol: str, quote: Quote) -> None:
        self._priced(symbol)
        last_price_at = self._last_prices.timestamp(symbol)
        if last_price_at is not None and quote.timestamp < last_price_at:
            return  # its subscribers have a newer live price
        frame = protocol.quote_message(symbol, quote)
        for client in self._subscribers_of(symbol):
            if client.trade_dialect is None:
                client.send(frame)
                self.polled_quotes += 1
