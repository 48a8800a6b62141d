"""When the upstream was not being received, so a bar can say it may lack trades.

A bar whose interval overlaps such a time carries `"gap": true` (docs/bars.md "Gaps"):
a chart can mark it instead of drawing what looks like a quiet market. `Outages` keeps
the spans of this aggregator's own blindness: from its start until the upstream first
connects, and from each loss of the connection (reconnecting, refused) until it is back.
It is bounded (MAX_SPANS): past that the two spans closest in time merge into one,
which can only mark more bars, never fewer, and as few more as it can. Pure
bookkeeping: the times are passed in (Unix ms).
"""

from __future__ import annotations

MAX_SPANS = 1024  # an upstream that flaps every second for 17 minutes still fits


class Outages:
    def __init__(self, *, down_since: int | None = None) -> None:
        """`down_since`: the aggregator starts blind at that time (None: never was)."""
        self._spans: list[tuple[int, int]] = []  # ended outages, oldest first
        self.down_since = down_since  # the outage going on, if any

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def began(self, now_ms: int) -> bool:
        """The upstream stopped arriving; True if that is news."""
        if self.down_since is not None:
            return False
        self.down_since = now_ms
        return True

    def ended(self, now_ms: int) -> None:
        if self.down_since is None:
            return
        self._spans.append((self.down_since, now_ms))
        self.down_since = None
        if len(self._spans) > MAX_SPANS:  # the two closest spans become one
            spans = self._spans
            index = min(range(len(spans) - 1), key=lambda i: spans[i + 1][0] - spans[i][1])
            spans[index : index + 2] = [(spans[index][0], spans[index + 1][1])]

    def overlaps(self, start_ms: int, end_ms: int) -> bool:
        """Whether [start_ms, end_ms) shares any time with an outage."""
        if self.down_since is not None and self.down_since < end_ms:
            return True
        for down, up in reversed(self._spans):  # a bar is nearly always recent
            if up <= start_ms:
                return False  # spans are in time order: the older ones end earlier
            if down < end_ms:
                return True
        return False
