"""What the gateway remembers of Finnhub's quotes: each symbol's last quote (fresh for
`QUOTE_TTL`; its previous close kept for `change` on trades as long as it is
remembered), and apart from them the symbols Finnhub has no quote for (it answers
zeros), fresh for `QUOTE_UNKNOWN_TTL`, so asking again for junk costs nothing.

Both are bounded, least recently stored first out, and apart: however many unknown
symbols an attacker asks for, they never push a real quote (and the previous close
behind every update's change) out. Time is passed in; no I/O, no logging.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from stock_gateway.market_data.model import Quote

MAX_CACHED = 5000  # symbols whose quote (and previous close) is remembered
MAX_UNKNOWN = 10_000  # symbols remembered as having no quote

V = TypeVar("V")


class QuoteCache:
    def __init__(self, ttl: float, unknown_ttl: float) -> None:
        self._ttl = ttl
        self._unknown_ttl = unknown_ttl
        self._quotes: OrderedDict[str, tuple[Quote, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def fresh(self, symbol: str, now: float) -> bool:
        """A quote younger than QUOTE_TTL, or a "no quote" younger than QUOTE_UNKNOWN_TTL."""
        entry = self._quotes.get(symbol)
        if entry is not None:
            return entry[1] >= now - self._ttl
        stored = self._unknown.get(symbol)
        return stored is not None and stored >= now - self._unknown_ttl

    def get(self, symbol: str) -> Quote | None:
        """The last quote stored, however old (None: none, or Finnhub has none)."""
        entry = self._quotes.get(symbol)
        return entry[0] if entry is not None else None

    def previous_close(self, symbol: str) -> float | None:
        quote = self.get(symbol)
        return quote.previous_close if quote is not None and quote.previous_close > 0 else None

    def store(self, symbol: str, quote: Quote | None, now: float) -> bool:
        """Remember what Finnhub answered; True when it brings a previous close other
        than the one known (a new trading day)."""
        if quote is None:
            self._quotes.pop(symbol, None)  # its previous close means nothing any more
            _put(self._unknown, symbol, now, MAX_UNKNOWN)
            return False
        before = self.previous_close(symbol)
        self._unknown.pop(symbol, None)
        _put(self._quotes, symbol, (quote, now), MAX_CACHED)
        after = self.previous_close(symbol)
        return before is not None and after is not None and after != before


def _put(table: OrderedDict[str, V], symbol: str, value: V, bound: int) -> None:
    table[symbol] = value
    table.move_to_end(symbol)
    while len(table) > bound:
        table.popitem(last=False)
