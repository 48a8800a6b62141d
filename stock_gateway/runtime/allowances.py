"""Allowances per key (an address, a user, an owner of symbols): one `TokenBucket` per key,
created on first use and forgotten once full again, so memory stays bounded however
many keys an attacker invents. Handshakes per address and per user, quote requests
per owner (a quote fetch from a user and its address at once, or from none), and bytes
of bar history per client and per owner (a cost per take: one handshake, or so many
bytes) are spent from one of these.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from stock_gateway.runtime.token_bucket import TokenBucket

# Idle keys are swept when the table grows past this many.
SWEEP_AT = 10_000


class Allowances:
    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = SWEEP_AT

    @classmethod
    def per_minute(cls, count: float) -> Allowances:
        """`count` a minute per key, all of them at once if a key has waited a minute."""
        return cls(count / 60, count)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float, keep: Container[str] = (), cost: float = 1.0) -> float:
        """Spend `cost` from `key`'s allowance: 0, or the seconds until it is due (then
        nothing is spent). Keys in `keep` are never swept (say, addresses with open
        connections)."""
        return self._bucket(key, now, keep).take(now, cost)

    def wait(self, key: str, now: float, cost: float = 1.0) -> float:
        """The seconds until `key` may spend `cost` (0: now); spends nothing."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now, cost)  # none yet: a full one

    def spend(self, key: str, now: float, cost: float) -> None:
        """Spend `cost` whether it is there or not (a debt; negative: give it back)."""
        self._bucket(key, now, ()).spend(now, cost)

    def take_all(self, keys: Sequence[str], now: float) -> float:
        """Spend one from every key's allowance, or from none: 0, or the seconds until
        each has one."""
        buckets = [self._bucket(key, now, keys) for key in dict.fromkeys(keys)]
        wait = max((bucket.due(now) for bucket in buckets), default=0.0)
        if not wait:
            for bucket in buckets:
                bucket.take(now)
        return wait

    def _bucket(self, key: str, now: float, keep: Container[str]) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now, keep)
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        return bucket

    def _sweep(self, now: float, keep: Container[str]) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now) and key not in keep:
                del self._buckets[key]
        # Amortised: under a spread-out attack the table may stay big; sweep it again only
        # once it has doubled, so each new key costs O(1) on average.
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))
