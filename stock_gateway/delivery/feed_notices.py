"""What clients hear of the feed planner (market_data/feed_plan.py): a `feed` message
to every subscriber of a symbol whose feed changed, and to a client that joins a
symbol already sampled or polled (it heard no change); each polled quote to the
subscribers of its symbol (unless older than the last live price they have).

Each client hears them in its own dialect (delivery/encoders.py): Finnhub's (`/`) has
no such message and no quote, so nothing is invented for it; its clients get the
trades of live and sampled symbols as they come. Never blocks, never fetches anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

from stock_gateway.delivery.encoders import Encoder, send_each
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.delivery.quote_delivery import LastPrices
from stock_gateway.market_data.model import Quote
from stock_gateway.protocol import Frame


class FeedNotices:
    def __init__(
        self,
        subscribers_of: Callable[[str], Iterable[ClientConnection]],
        last_prices: LastPrices,
        feed_of: Callable[[str], str] = lambda symbol: "live",
    ) -> None:
        self._subscribers_of = subscribers_of
        self._last_prices = last_prices
        self._feed_of = feed_of  # the planner's (a symbol it has not planned: "live")
        self.feed_messages = 0
        self.polled_quotes = 0

    def feeds_changed(self, changes: Mapping[str, str]) -> None:
        for symbol, feed in changes.items():
            self.feed_messages += send_each(
                self._subscribers_of(symbol), partial(_feed, symbol=symbol, feed=feed)
            )

    def joined(self, client: ClientConnection, symbols: Iterable[str]) -> None:
        """`client` took `symbols`: the feed of each one not live (a new symbol's comes
        with the plan's change, to every subscriber)."""
        for symbol in symbols:
            if (feed := self._feed_of(symbol)) != "live":
                self.feed_messages += send_each((client,), partial(_feed, symbol=symbol, feed=feed))

    def polled(self, symbol: str, quote: Quote) -> None:
        last_price_at = self._last_prices.timestamp(symbol)
        if last_price_at is not None and quote.timestamp < last_price_at:
            return  # its subscribers have a newer live price
        self.polled_quotes += send_each(
            self._subscribers_of(symbol), partial(_quote, symbol=symbol, quote=quote)
        )


def _feed(encoder: Encoder, symbol: str, feed: str) -> Frame | None:
    return encoder.feed(symbol, feed)


def _quote(encoder: Encoder, symbol: str, quote: Quote) -> Frame | None:
    return encoder.quote(symbol, quote)
