"""A new subscriber's snapshot: the last `price_update` of each symbol the upstream
carries, kept by the hub as updates pass and forgotten when the upstream lets the
symbol go. Frames only; no I/O. Also what the quotes compare with: a quote older
than the last price is not sent (delivery/quote_delivery.py).
"""

from __future__ import annotations

import orjson

from stock_gateway.protocol import Frame


class LatestPrices:
    """The last `price_update` of each symbol the upstream carries: a new subscriber's
    snapshot. Forgotten when the upstream stops carrying the symbol (it would only go
    stale), which the capacity reports (`UpstreamCapacity(on_release=...)`)."""

    def __init__(self) -> None:
        self._frames: dict[str, Frame] = {}

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._frames

    def get(self, symbol: str) -> Frame | None:
        return self._frames.get(symbol)

    def timestamp(self, symbol: str) -> int | None:
        """When the symbol's last price was traded (Unix ms); None without one. Read from
        the frame (rarely: when a quote is about to go out), not kept on the hot path."""
        frame = self._frames.get(symbol)
        if frame is None:
            return None
        timestamp = orjson.loads(frame.payload)["data"]["timestamp"]
        return timestamp if isinstance(timestamp, int) else None

    def keep(self, frame: Frame) -> None:
        self._frames[frame.symbol] = frame

    def forget(self, symbol: str) -> None:
        self._frames.pop(symbol, None)
