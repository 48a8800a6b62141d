"""Who may open a `/ws` connection now: the handshake checks, in the order they run.

1. **Origin**: CORS does not cover WebSockets, so the browser's `Origin` is checked
   against configured values only (never the request's own Host header, which a
   DNS-rebinding page sets). 403.
2. **Token** (`GATEWAY_TOKEN`), compared in constant time. 401.
3. **Per address**: at most `MAX_CONNECTIONS_PER_ADDRESS` open connections and
   `ADDRESS_HANDSHAKE_RATE` handshakes per second (bursts of `ADDRESS_HANDSHAKE_BURST`)
   from one client address. 429 with `Retry-After`. The address is the ASGI scope's
   client, which uvicorn takes from `X-Forwarded-For` only when the peer is a trusted
   proxy (`FORWARDED_ALLOW_IPS`).
4. **Per user**, with signed tokens (`identify`, auth.py): once a token names its user,
   at most `MAX_CONNECTIONS_PER_USER` open connections and the same handshake rate per
   user as per address (`user_refusal`, then `holding_user`).

`Admission` keeps the per-address and per-user counters, and counts every refusal by
reason for /metrics; memory is bounded by forgetting keys with no open connection and
a full bucket. It never reads message bodies and never logs a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from access.tokens import Authenticator, AuthFailed, Identity
from delivery.outbox import UNRESTRICTED, Entitlements
from runtime.token_bucket import TokenBucket
from settings import Settings

USER_PREFIX = "user:"  # a user's key beside the addresses' (no address starts so)
# Idle per-address state is swept when the table grows past this many addresses.
SWEEP_AT = 10_000


def address_key(host: str) -> str:
    """Whose allowance a client address uses: the address itself, or for IPv6 its /64
    (one subscriber line gets a whole /64: counting single addresses would be no limit)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    retry_after: int | None = None


class Admission:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.authenticator = Authenticator(settings)
        self._open: dict[str, int] = {}  # address, or "user:<sub>" -> open connections
        self._buckets: dict[str, TokenBucket] = {}  # address -> handshake budget
        self.refused: dict[str, int] = {}  # reason -> count, for /metrics
        self._sweep_at = SWEEP_AT

    def connections_from(self, address: str) -> int:
        return self._open.get(address, 0)

    def refusal(
        self, origin: str | None, token: str | None, address: str, now: float
    ) -> Refusal | None:
        """Why this handshake must be refused, or None (and the handshake is counted)."""
        settings = self._settings
        if origin is None:
            if settings.require_origin:
                return self._refuse("origin", Refusal(403, "an Origin header is required"))
        elif not (settings.any_origin or origin in settings.allowed_origins):
            return self._refuse("origin", Refusal(403, "origin not allowed: not in FRONTEND_URL"))
        if settings.gateway_token and not _same(token or "", settings.gateway_token):
            return self._refuse("token", Refusal(401, "missing or wrong token"))
        return self._over_limits(
            address, settings.max_connections_per_address, "from your address", "address", now
        )

    @property
    def verifies_tokens(self) -> bool:
        """True when clients must prove who they are with a signed token (JWT)."""
        return self.authenticator.enabled

    @property
    def users(self) -> int:
        """Distinct users with an open connection (read by /health and /metrics only)."""
        return sum(1 for key in self._open if key.startswith(USER_PREFIX))

    async def identify(self, token: str) -> Identity:
        """The user a signed token proves; AuthFailed (counted) otherwise."""
        try:
            return await self.authenticator.verify(token)
        except AuthFailed as exc:
            self.count_refusal(f"auth_{exc.reason}")
            raise

    def user_refusal(self, user: str, now: float) -> Refusal | None:
        """Why this user may not open another connection now, or None (and counted)."""
        limit = self._settings.max_connections_per_user
        return self._over_limits(user_key(user), limit, "for your user", "user", now)

    def open_refusal(self, address: str, user: str | None) -> Refusal | None:
        """The connection limits alone, checked again right before a connection is
        counted where the first check happened in another task (`GET /stream`)."""
        settings = self._settings
        refusal = self._over_limits(
            address, settings.max_connections_per_address, "from your address", "address"
        )
        if refusal is None and user is not None:
            limit = settings.max_connections_per_user
            refusal = self._over_limits(user_key(user), limit, "for your user", "user")
        return refusal

    def _over_limits(
        self, key: str, limit: int, whose: str, kind: str, now: float | None = None
    ) -> Refusal | None:
        """Open connections of an address or a user (`key`), and with `now` the
        handshake rate too."""
        if self._open.get(key, 0) >= limit:
            return self._refuse(
                f"{kind}_connections",
                Refusal(429, f"too many connections {whose} (at most {limit})", retry_after=10),
            )
        if now is None:
            return None
        wait = self._take_handshake(key, now)
        if wait > 0:
            rate = self._settings.address_handshake_rate
            return self._refuse(
                f"{kind}_handshakes",
                Refusal(
                    429,
                    f"too many new connections {whose} (at most {rate:g} per second)",
                    retry_after=max(1, math.ceil(wait)),
                ),
            )
        return None

    async def http_asker(
        self, token: str | None, address: str
    ) -> tuple[str, Entitlements] | Refusal:
        """Who asks over plain HTTP (`GET /quote/...`, `/bars/...`): whose share the
        request spends (with signed tokens its user's, else its address's) and what it
        may ask for; or the refusal (401 without a good token)."""
        if self.verifies_tokens:
            try:
                identity = await self.identify(token or "")
            except AuthFailed as exc:
                return Refusal(401, f"token {exc.reason}" if token else "a token is required")
            return user_key(identity.user), identity.entitlements
        if self._settings.gateway_token and not _same(token or "", self._settings.gateway_token):
            return self._refuse("token", Refusal(401, "missing or wrong token"))
        return address, UNRESTRICTED

    @contextmanager
    def holding(self, address: str) -> Iterator[None]:
        """Count one open connection from `address` for the length of the block."""
        self._open[address] = self._open.get(address, 0) + 1
        try:
            yield
        finally:
            left = self._open[address] - 1
            if left:
                self._open[address] = left
            else:
                del self._open[address]

    @contextmanager
    def holding_user(self, user: str) -> Iterator[None]:
        """Count one open connection of `user` for the length of the block."""
        with self.holding(user_key(user)):
            yield

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def _take_handshake(self, address: str, now: float) -> float:
        """Spend one handshake from the address's bucket: 0, or seconds until one is due."""
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            settings = self._settings
            bucket = TokenBucket(
                settings.address_handshake_rate, settings.address_handshake_burst, now
            )
            self._buckets[address] = bucket
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        for address, bucket in list(self._buckets.items()):
            if bucket.full(now) and address not in self._open:
                del self._buckets[address]
        # Amortised: under a spread-out attack the table may stay big; sweep it again only
        # once it has doubled, so each new address costs O(1) on average.
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))

    def _refuse(self, reason: str, refusal: Refusal) -> Refusal:
        self.count_refusal(reason)
        return refusal


def request_token(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """A client's token over HTTP: `?token=`, else `Authorization: Bearer ...`."""
    token = query.get("token")
    authorization = headers.get("authorization", "")
    if token is None and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return token


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())  # constant time


def user_key(user: str) -> str:
    return USER_PREFIX + user
