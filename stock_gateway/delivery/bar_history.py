"""Each series' history as one `bars` message, encoded once and shared until it changes.

Every client that asks for a symbol's bars in one interval gets the same bytes, so
`HistoryFrames.frame()` encodes them once and hands the same `Frame` to each, until the
series changes (its revision in the book, bars/book.py). The history is what it always
was: the closed bars, oldest first, then the open one(s), so a chart shows the current
bar at once and the live `bar` events follow. The closed bars, nearly all of it, are
kept encoded apart from the open bar: a busy symbol's open bar changes with each trade,
and re-encoding every closed bar for each would bring back the cost this saves.

Entries of series the book no longer holds are swept once the entries outnumber twice
what was held at the last sweep; memory is one encoded history per series asked for.
`candles(bars)` is the other shape a history takes: Finnhub's, for `GET /bars` and the
candle endpoint of the Finnhub mirror.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from stock_gateway import protocol
from stock_gateway.bars.book import Bar, BarBook, Interval
from stock_gateway.protocol import Frame

SWEEP_AT = 64


@dataclass(frozen=True, slots=True)
class _Entry:
    revision: tuple[int, int]  # the book's (closed, open) revisions encoded here
    closed: bytes  # the closed bars' JSON objects, comma-separated
    frame: Frame


class HistoryFrames:
    def __init__(self, book: BarBook) -> None:
        self._book = book
        self._entries: dict[tuple[str, Interval], _Entry] = {}
        self._sweep_at = SWEEP_AT
        self.encoded_bars = 0  # bars encoded in all (for tests)

    def __len__(self) -> int:
        return len(self._entries)

    def frame(self, symbol: str, interval: Interval) -> Frame:
        """The series' `bars` message as the book holds it now."""
        revision = self._book.revision(symbol, interval)
        if revision is None:
            return protocol.bars_message(symbol, interval)
        key = (symbol, interval)
        entry = self._entries.get(key)
        if entry is not None and entry.revision == revision:
            return entry.frame
        closed, open_bars = self._book.parts(symbol, interval)
        if entry is not None and entry.revision[0] == revision[0]:
            encoded = entry.closed
        else:
            encoded = self._items(closed)
        if open_bars and closed and open_bars[0].t < closed[-1].t:
            # An open bar older than a closed one (mirrored or reloaded): in time order.
            items = self._items(sorted([*closed, *open_bars], key=lambda bar: bar.t))
        else:
            items = b",".join(part for part in (encoded, self._items(open_bars)) if part)
        frame = protocol.bars_message(symbol, interval, b"[" + items + b"]")
        if entry is None and len(self._entries) >= self._sweep_at:
            self._sweep()
        self._entries[key] = _Entry(revision, encoded, frame)
        return frame

    def _items(self, bars: Iterable[Bar]) -> bytes:
        """Bars as their JSON objects, comma-separated: an array without its brackets."""
        encoded = [bar.as_dict() for bar in bars]
        self.encoded_bars += len(encoded)
        return orjson.dumps(encoded)[1:-1]

    def _sweep(self) -> None:
        for key in [key for key in self._entries if self._book.revision(*key) is None]:
            del self._entries[key]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._entries))


def candles(bars: list[Bar]) -> dict[str, Any]:
    """Finnhub's candle shape (`t` in seconds), for chart code written against Finnhub."""
    if not bars:
        return {"c": [], "h": [], "l": [], "o": [], "t": [], "v": [], "gap": [], "s": "no_data"}
    return {
        "c": [bar.c for bar in bars],
        "h": [bar.h for bar in bars],
        "l": [bar.l for bar in bars],
        "o": [bar.o for bar in bars],
        "t": [bar.t // 1000 for bar in bars],
        "v": [round(bar.v, 8) for bar in bars],
        "gap": [bar.gap for bar in bars],  # ours, beside Finnhub's: docs/bars.md "Gaps"
        "s": "ok",
    }
