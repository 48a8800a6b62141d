"""A new subscriber's snapshot: the last `price_update` of each symbol the upstream
carries, kept by the hub as updates pass and forgotten when the upstream lets the
symbol go. Frames only; no I/O.
"""

from __future__ import annotations

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

    def keep(self, frame: Frame) -> None:
        self._frames[frame.symbol] = frame

    def forget(self, symbol: str) -> None:
        self._frames.pop(symbol, None)
