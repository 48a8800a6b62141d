"""May this client do this? `Admission.admit` answers for every endpoint: a connection
(`/ws`, `/stream`) or a request (`/quote`, `/bars`), with who the client is
(`Admitted`: its address, its user and entitlements with signed tokens, whose share
its symbols use) or a `Refusal` carrying its HTTP status, close code, error code and
`Retry-After`. The checks, in the order they run:

1. **Origin** (connections): CORS does not cover WebSockets, so the browser's `Origin`
   is checked against configured values only (never the request's own Host header,
   which a DNS-rebinding page sets). 403.
2. **Token**: `GATEWAY_TOKEN`, compared in constant time; or with signed tokens
   (`identify`, access/tokens.py) the user it proves. 401.
3. **Per address** (connections): at most `MAX_CONNECTIONS_PER_ADDRESS` open
   connections and `ADDRESS_HANDSHAKE_RATE` handshakes per second (bursts of
   `ADDRESS_HANDSHAKE_BURST`) from one client address. 429 with `Retry-After`. The
   address is the ASGI scope's client, which uvicorn takes from `X-Forwarded-For` only
   when the peer is a trusted proxy (`FORWARDED_ALLOW_IPS`).
4. **Per user** (connections, signed tokens): at most `MAX_CONNECTIONS_PER_USER` open
   connections and the same handshake rate per user as per address.
5. **Server full** (connections): `MAX_CLIENTS` open in all. 503, or 1013 on a socket.
6. **Entitlements** (requests about a symbol): the token's symbols. 403.

Plain HTTP requests (every route but `/ws`, `/stream` and `/health`) are paced per
address before their route runs (`pace_request`, asked once per request by
endpoints/request_rate.py): `HTTP_REQUESTS_PER_ADDRESS` a second, bursts of
`HTTP_REQUEST_BURST`. 429 with `Retry-After`.

An admitted connection is counted while it is open (`open`, which checks the counts
once more with nothing awaited in between, so parallel handshakes cannot all pass);
a `/ws` client that authenticates with its first message is counted as its user then
(`admit_user`). `Admission` counts every refusal by reason for /metrics; memory is
bounded by forgetting keys with no open connection and a full allowance. It never
reads message bodies and never logs a token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from stock_gateway.access.credentials import own_origin, same_secret
from stock_gateway.access.entitlements import UNRESTRICTED, Entitlements
from stock_gateway.access.refusal import Refusal
from stock_gateway.access.tokens import Authenticator, AuthFailed, Identity
from stock_gateway.protocol import CLOSE_AUTH_FAILED, CLOSE_TOO_MANY_FOR_USER, CLOSE_TRY_AGAIN_LATER
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.settings import Settings

USER_PREFIX = "user:"  # a user's key beside the addresses' (no address starts so)


@dataclass(frozen=True)
class Admitted:
    """Who an admitted client is."""

    address: str
    identity: Identity | None = None  # with signed tokens, once known

    @property
    def user(self) -> str:
        return self.identity.user if self.identity is not None else "-"

    @property
    def owner(self) -> str:
        """Whose fair share its symbols and quotes use: its user's, else its address's."""
        return user_key(self.identity.user) if self.identity is not None else self.address

    @property
    def entitlements(self) -> Entitlements:
        return self.identity.entitlements if self.identity is not None else UNRESTRICTED


class OpenConnection:
    """One admitted connection, counted (address, user, in all) until `close()`."""

    def __init__(self, admission: Admission, admitted: Admitted) -> None:
        self.admitted = admitted
        self._admission = admission
        self._keys = [admitted.address]
        if admitted.identity is not None:
            self._keys.append(user_key(admitted.identity.user))
        for key in self._keys:
            admission._count(key, +1)
        admission.open_connections += 1

    def as_user(self, identity: Identity) -> None:
        """The connection's user became known (a `/ws` first-message auth)."""
        self.admitted = Admitted(self.admitted.address, identity)
        key = user_key(identity.user)
        self._keys.append(key)
        self._admission._count(key, +1)

    def close(self) -> None:
        for key in self._keys:
            self._admission._count(key, -1)
        self._keys = []
        self._admission.open_connections -= 1

    def __enter__(self) -> OpenConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Admission:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.authenticator = Authenticator(settings)
        self._open: dict[str, int] = {}  # address, or "user:<sub>" -> open connections
        self.open_connections = 0
        # Distinct users with an open connection, kept as they come and go: /health
        # reads it, and must cost the same however many are connected.
        self.users = 0
        # Handshakes per address and per user (a user's key: "user:<sub>").
        self._handshakes = Allowances(
            settings.address_handshake_rate, settings.address_handshake_burst
        )
        self._requests = Allowances(settings.http_requests_per_address, settings.http_request_burst)
        self.refused: dict[str, int] = {}  # reason -> count, for /metrics

    @property
    def verifies_tokens(self) -> bool:
        """True when clients must prove who they are with a signed token (JWT)."""
        return self.authenticator.enabled

    def connections_from(self, address: str) -> int:
        return self._open.get(address, 0)

    async def admit(
        self,
        kind: Literal["connection", "request"],
        *,
        address: str,
        origin: str | None = None,
        host: str | None = None,
        token: str | None = None,
        symbol: str | None = None,
        token_later: bool = False,
        now: float | None = None,
    ) -> Admitted | Refusal:
        """May this client open a connection, or make a request (about `symbol`)? Who it
        is, or why not. A connection's handshake is spent from its allowances here; with
        `token_later` (`/ws`) a signed token may still come in the first message."""
        settings = self._settings
        now = time.monotonic() if now is None else now
        if kind == "connection":
            refusal = self._origin_refusal(origin, host)
            if refusal is None:
                refusal = self._over_limits(address, "address", now)
            if refusal is not None:
                return refusal
        identity: Identity | None = None
        if self.verifies_tokens and (token is not None or not token_later):
            try:
                identity = await self.identify(token or "")
            except AuthFailed as exc:
                reason = f"token {exc.reason}" if token else "a token is required"
                return Refusal(reason, "auth_failed", 401, CLOSE_AUTH_FAILED)
        elif settings.gateway_token and not same_secret(token or "", settings.gateway_token):
            return self._refuse("token", Refusal("missing or wrong token", status=401))
        if kind == "connection":
            if identity is not None:
                refusal = self._over_limits(user_key(identity.user), "user", now)
                if refusal is not None:
                    return refusal
            if self.open_connections >= settings.max_clients:
                return self._refuse("server_full", SERVER_FULL)
        admitted = Admitted(address, identity)
        if symbol is not None and not admitted.entitlements.allow(symbol):
            return Refusal(
                "your token does not entitle you to this symbol", "forbidden_symbol", 403
            )
        return admitted

    def pace_request(self, address: str, now: float | None = None) -> Refusal | None:
        """May `address` make one more plain HTTP request now? One is spent if so."""
        now = time.monotonic() if now is None else now
        wait = self._requests.take(address, now)
        if wait <= 0:
            return None
        rate = self._settings.http_requests_per_address
        return self._refuse(
            "address_requests",
            Refusal(
                f"too many requests from your address (at most {rate:g} per second)",
                retry_after=max(1, math.ceil(wait)),
            ),
        )

    def open(self, admitted: Admitted) -> OpenConnection | Refusal:
        """Count an admitted connection as open, if its address and user still have room
        (another connection may have opened since `admit`)."""
        refusal = self._over_limits(admitted.address, "address")
        if refusal is None and admitted.identity is not None:
            refusal = self._over_limits(user_key(admitted.identity.user), "user")
        return refusal if refusal is not None else OpenConnection(self, admitted)

    async def admit_user(self, connection: OpenConnection, token: str) -> Refusal | None:
        """A `/ws` client's first-message token: its user, within the user's limits, is
        counted on the open connection; or why not (4003, 4029)."""
        try:
            identity = await self.identify(token)
        except AuthFailed as exc:
            return Refusal(f"token {exc.reason}", "auth_failed", 401, CLOSE_AUTH_FAILED)
        refusal = self._over_limits(user_key(identity.user), "user", time.monotonic())
        if refusal is not None:
            return refusal
        connection.as_user(identity)
        return None

    async def identify(self, token: str) -> Identity:
        """The user a signed token proves; AuthFailed (counted) otherwise."""
        try:
            return await self.authenticator.verify(token)
        except AuthFailed as exc:
            self.count_refusal(f"auth_{exc.reason}")
            raise

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def _origin_refusal(self, origin: str | None, host: str | None) -> Refusal | None:
        settings = self._settings
        if origin is None:
            if settings.require_origin:
                return self._refuse("origin", Refusal("an Origin header is required", status=403))
        elif not (
            settings.any_origin or origin in settings.allowed_origins or own_origin(origin, host)
        ):
            return self._refuse(
                "origin", Refusal("origin not allowed: not in FRONTEND_URL", status=403)
            )
        return None

    def _over_limits(
        self, key: str, kind: Literal["address", "user"], now: float | None = None
    ) -> Refusal | None:
        """Open connections of an address or a user (`key`), and with `now` the
        handshake rate too (one handshake is spent)."""
        settings = self._settings
        limit = (
            settings.max_connections_per_address
            if kind == "address"
            else settings.max_connections_per_user
        )
        whose = "from your address" if kind == "address" else "for your user"
        if self._open.get(key, 0) >= limit:
            return self._refuse(
                f"{kind}_connections",
                Refusal(
                    f"too many connections {whose} (at most {limit})",
                    "too_many_connections",
                    close_code=CLOSE_TOO_MANY_FOR_USER,
                    retry_after=10,
                ),
            )
        if now is None:
            return None
        wait = self._handshakes.take(key, now, keep=self._open)
        if wait > 0:
            rate = settings.address_handshake_rate
            return self._refuse(
                f"{kind}_handshakes",
                Refusal(
                    f"too many new connections {whose} (at most {rate:g} per second)",
                    "too_many_connections",
                    close_code=CLOSE_TOO_MANY_FOR_USER,
                    retry_after=max(1, math.ceil(wait)),
                ),
            )
        return None

    def _count(self, key: str, change: int) -> None:
        before = self._open.get(key, 0)
        left = before + change
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        if key.startswith(USER_PREFIX) and (before > 0) != (left > 0):
            self.users += 1 if left > 0 else -1

    def _refuse(self, reason: str, refusal: Refusal) -> Refusal:
        self.count_refusal(reason)
        return refusal


SERVER_FULL = Refusal(
    "server full, try again later", "too_many_connections", 503, CLOSE_TRY_AGAIN_LATER
)


def user_key(user: str) -> str:
    return USER_PREFIX + user
