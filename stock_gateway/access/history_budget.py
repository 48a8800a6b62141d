"""Bytes of bar history a client, and its address, may be sent per minute.

A `bars` history is the largest answer a client can ask for (240 bars a symbol, about
0.9 MB for 50 symbols' 1s bars; a database-backed store will keep far longer ones),
and asking again costs the client one small message. So each history sent is charged
its bytes, the cost it really has, to the client's allowance
(`HISTORY_BYTES_PER_CLIENT` a minute) and to its owner's (its address, or its user
with signed tokens: `HISTORY_BYTES_PER_ADDRESS` a minute), token buckets of bytes
(runtime/allowances.py). A history that does not fit either is refused with
`rate_limited`, naming the limit; one bigger than a whole allowance is allowed from a
full one and leaves it in debt, so it stays possible, only rare.

Reads over HTTP (`GET /bars`, Finnhub's candle endpoint) are charged their size once
known, an owner in debt being refused before any work (`charge_read`, `settle_read`);
and they also spend, before the work, an estimate of their size from the gateway's
own allowance for all of them (`HISTORY_READ_BYTES_PER_MINUTE`, a burst of
`READ_BURST_SECONDS` of it), settled with the size after: reading and encoding a long
history costs CPU in proportion to its bytes (about 64 ms for 10,000 bars), and many
addresses reading at once must not take the event loop from everyone's streams. Time
is passed in or read from the monotonic clock; no I/O.
"""

from __future__ import annotations

import math
import time

from stock_gateway.access.refusal import Refusal
from stock_gateway.runtime.allowances import Allowances

MINUTE = 60.0
READ_BURST_SECONDS = 5.0  # HTTP reads of the whole gateway at once: 5 s of their rate
GATEWAY = "*"  # the key of the gateway's own allowance for HTTP reads


class HistoryBudget:
    def __init__(
        self, per_client: float, per_address: float, per_gateway_reads: float | None = None
    ) -> None:
        self.per_client = per_client
        self.per_address = per_address
        self.per_gateway_reads = per_gateway_reads
        self._clients = Allowances(per_client / MINUTE, per_client)
        self._owners = Allowances(per_address / MINUTE, per_address)
        self._reads = (
            None
            if per_gateway_reads is None
            else Allowances(
                per_gateway_reads / MINUTE, per_gateway_reads * READ_BURST_SECONDS / MINUTE
            )
        )
        self.refused = 0  # histories refused, for /metrics

    def charge(
        self, client: str, owner: str, cost: int, now: float | None = None
    ) -> Refusal | None:
        """Spend `cost` bytes from both allowances, or from neither and say why not."""
        now = time.monotonic() if now is None else now
        own = self._clients.wait(client, now, cost)
        shared = self._owners.wait(owner, now, cost)
        if own or shared:
            self.refused += 1
            limit, whose = (
                (self.per_client, "client") if own >= shared else (self.per_address, "address")
            )
            retry = max(1, math.ceil(max(own, shared)))
            return Refusal(
                f"bar history is limited to {limit:.0f} bytes a minute per {whose}; "
                f"try again in {retry} s",
                "rate_limited",
                retry_after=retry,
            )
        self.owe(client, owner, cost, now)
        return None

    def owe(self, client: str, owner: str, cost: int, now: float | None = None) -> None:
        """Spend `cost` bytes from both, in debt if need be (negative: give them back)."""
        now = time.monotonic() if now is None else now
        self._clients.spend(client, now, cost)
        self._owners.spend(owner, now, cost)

    def charge_read(
        self, client: str, owner: str, estimate: int, now: float | None = None
    ) -> Refusal | None:
        """Before an HTTP read: the client and owner must not be in debt, and the
        gateway's allowance for reads must hold `estimate` (then spent), or say why not."""
        now = time.monotonic() if now is None else now
        if self._reads is not None and (wait := self._reads.wait(GATEWAY, now, estimate)):
            self.refused += 1
            retry = max(1, math.ceil(wait))
            return Refusal(
                f"bar history read over HTTP is limited to {self.per_gateway_reads:.0f} bytes "
                f"a minute for the whole gateway; try again in {retry} s",
                "rate_limited",
                retry_after=retry,
            )
        refusal = self.charge(client, owner, 0, now)
        if refusal is None and self._reads is not None:
            self._reads.spend(GATEWAY, now, estimate)
        return refusal

    def settle_read(
        self, client: str, owner: str, size: int, estimate: int, now: float | None = None
    ) -> None:
        """After an HTTP read charged `estimate`: its `size` (0 if it failed)."""
        now = time.monotonic() if now is None else now
        self.owe(client, owner, size, now)
        if self._reads is not None:
            self._reads.spend(GATEWAY, now, size - estimate)
