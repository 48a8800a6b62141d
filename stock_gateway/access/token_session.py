"""A connected user's token over time, when the gateway verifies signed tokens.

Once a client is in (access/tokens.py verified its token), `ClientAuth` says what comes next:
an "expiring" warning `AUTH_EXPIRY_WARNING` seconds before the token's `exp` (or half
way through a token that lives shorter than twice that, so short tokens are refreshed
in time and never in a storm), then the expiry itself (plus `JWT_LEEWAY`, as long as
verification would still accept the token), when the session closes the connection
with 4001 unless the client sent a fresh token for the same user first (`refresh`: no
gap in its stream, and the fresh token's entitlements apply from then on).

Every surface that serves a signed token's holder (`/ws`, `/stream`, Finnhub's `/`)
holds one `ClientAuth` and waits for requests or events at most `wait()`, then asks
`due()`: at "expired" it ends the session (`/ws` and `/`: close 4001; `/stream`: its
end), all at the same moment, `exp` plus `JWT_LEEWAY`. This module is a small state
machine the sessions consult; it never touches a socket and never sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from stock_gateway.access.tokens import AuthFailed, Identity


@dataclass(frozen=True)
class Deadline:
    at: float  # time.time() seconds
    kind: Literal["expiring", "expired"]


class ClientAuth:
    def __init__(
        self,
        identity: Identity,
        identify: Callable[[str], Awaitable[Identity]],
        *,
        warning: float,
        leeway: float = 0.0,
    ) -> None:
        self._identify = identify
        self._warning = warning
        self._leeway = leeway  # JWT_LEEWAY: the close waits as long as verification would
        self._start(identity, time.time())

    def _start(self, identity: Identity, now: float) -> None:
        self.identity = identity
        lifetime = identity.expires_at - now
        self._warn_at = identity.expires_at - min(self._warning, lifetime / 2)
        self._warned = False

    def next_deadline(self) -> Deadline:
        if not self._warned:
            return Deadline(self._warn_at, "expiring")
        return Deadline(self.identity.expires_at + self._leeway, "expired")

    def wait(self, limit: float | None = None) -> float:
        """How long a session may wait (for a request, an event) before it must look at
        the token again: until its next deadline, or `limit` if sooner."""
        until = max(0.0, self.next_deadline().at - time.time())
        return until if limit is None else min(limit, until)

    def due(self) -> Deadline | None:
        """The deadline that has come, if one has: every surface ends the session at an
        "expired" one (a surface that cannot warn just goes on at "expiring", which
        counts as given)."""
        deadline = self.next_deadline()
        if time.time() < deadline.at:
            return None
        self._warned = True
        return deadline

    def warned(self) -> None:
        """The "expiring" warning went out: the next deadline is the expiry."""
        self._warned = True

    async def refresh(self, token: str) -> Identity:
        """A fresh token for the same user (AuthFailed otherwise, and nothing changes)."""
        identity = await self._identify(token)
        if identity.user != self.identity.user:
            raise AuthFailed("invalid")  # a refresh may not change who is connected
        self._start(identity, time.time())
        return identity

    def expires_in(self, now: float | None = None) -> int:
        return max(0, round(self.identity.expires_at - (time.time() if now is None else now)))
