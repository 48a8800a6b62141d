"""Who a client is: verification of signed tokens (JWT, with PyJWT), for per-user
limits and entitlements.

The mode follows the configuration: `JWT_SECRET` (HS256), `JWT_PUBLIC_KEY` (a PEM key:
RS256 for RSA, ES256 for P-256), or `JWT_JWKS_URL` (keys fetched with aiohttp, cached,
refetched on an unknown `kid` at most once a minute and when older than ten minutes,
so a revoked key stops verifying, with a timeout; an outage keeps the cached keys, so
connected users are not dropped). A key set is read as hostile input: at most
JWKS_MAX_BYTES of body (a longer one is refused without reading it all) and
JWKS_MAX_KEYS keys; anything else (not JSON, nested too deep, not a key set) fails
that fetch like an outage, and the client whose token needed it is refused as
"invalid", never with a server error. The accepted algorithms come
from the configuration (for JWKS, from each key's type), never from the token: `alg:
none` and HS/RS confusion are refused by construction. `exp` and `sub` are required;
`aud` and `iss` are checked when `JWT_AUDIENCE` / `JWT_ISSUER` are set; clocks may
differ by `JWT_LEEWAY` seconds.

A verified token gives an `Identity`: the user (`sub`), when it expires, and its
optional entitlements: a `symbols` claim (symbols or `fnmatch` patterns the user may
subscribe to) and a `max_symbols` claim (a lower per-client cap).

This module never logs a token or says which check failed beyond "expired" or
"invalid", and never talks to clients.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from stock_gateway.access.entitlements import UNRESTRICTED, Entitlements, SymbolPatterns
from stock_gateway.runtime.logs import get_logger
from stock_gateway.settings import Settings

logger = get_logger(__name__)

JWKS_REFRESH_SECONDS = 60.0  # at most one refetch a minute for an unknown kid
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MAX_AGE_SECONDS = 600.0  # keys older than this are refetched (a revoked key goes)
JWKS_MAX_BYTES = 1_048_576  # a real key set is a few KiB
JWKS_MAX_KEYS = 100  # a provider publishes a handful (the current and the next ones)
MAX_TOKEN_CHARS = 8192
MAX_USER_CHARS = 200  # a longer `sub` is refused


class JwksRefused(Exception):
    """A key set the gateway will not read: too large, too many keys, not a key set."""


class AuthFailed(Exception):
    """A token that does not let a client in; `reason` is all a client is told."""

    def __init__(self, reason: Literal["expired", "invalid"]) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    user: str  # the token's `sub`
    expires_at: float  # Unix seconds
    entitlements: Entitlements = UNRESTRICTED


class Authenticator:
    """Verifies tokens under the configured mode (`enabled` is False without one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._static_key: Any = None
        self._algorithms: list[str] = []
        if settings.jwt_secret:
            self._static_key, self._algorithms = settings.jwt_secret, ["HS256"]
        elif settings.jwt_public_key:
            self._static_key = _load_pem(settings.jwt_public_key)
            self._algorithms = (
                ["RS256"] if isinstance(self._static_key, rsa.RSAPublicKey) else ["ES256"]
            )
        self._jwks: dict[str, tuple[Any, str]] = {}  # kid -> (key, its algorithm)
        self.jwks_refresh_seconds = JWKS_REFRESH_SECONDS
        self._jwks_fetched_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None  # the one fetch under way

    @property
    def enabled(self) -> bool:
        return self._settings.auth_mode == "jwt"

    async def verify(self, token: str) -> Identity:
        """The identity a token proves, or AuthFailed("expired" / "invalid")."""
        try:
            if not token or len(token) > MAX_TOKEN_CHARS:
                raise jwt.InvalidTokenError("no token, or too long")
            key, algorithms = await self._key_for(token)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=algorithms,
                audience=self._settings.jwt_audience or None,
                issuer=self._settings.jwt_issuer or None,
                leeway=self._settings.jwt_leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": bool(self._settings.jwt_audience),
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise AuthFailed("invalid") from None  # `from None`: no token in a traceback
        identity = _identity(claims)
        if identity is None:
            raise AuthFailed("invalid")
        return identity

    async def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if self._static_key is not None:
            return self._static_key, self._algorithms
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str) or not kid:
            raise jwt.InvalidTokenError("no kid")
        fetched = self._jwks_fetched_at
        stale = fetched is not None and _now() - fetched > JWKS_MAX_AGE_SECONDS
        if kid not in self._jwks or stale:  # a rotation, or keys a provider may have revoked
            await self._refresh_jwks()
        if kid not in self._jwks:
            raise jwt.InvalidTokenError("unknown kid")
        key, algorithm = self._jwks[kid]
        return key, [algorithm]

    async def _refresh_jwks(self) -> None:
        """Refetch the key set, at most once per `jwks_refresh_seconds`. The fetch runs
        on its own (shielded): a client that gives up waiting cannot cancel it and so
        push the next fetch a minute away."""
        if self._fetching is None:
            fetched = self._jwks_fetched_at
            if fetched is not None and _now() - fetched < self.jwks_refresh_seconds:
                return
            self._jwks_fetched_at = _now()
            self._fetching = asyncio.create_task(self._fetch_jwks(), name="jwks-fetch")
        await asyncio.shield(self._fetching)

    async def _fetch_jwks(self) -> None:
        """One fetch, bounded by JWKS_TIMEOUT_SECONDS; on failure the cached keys stay."""
        timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT_SECONDS)
        try:
            async with (
                # Bytes as sent, counted as sent: no compressed answer can expand past
                # the bound in memory (a compressed one is simply not JSON).
                aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
                session.get(
                    self._settings.jwt_jwks_url, headers={"Accept-Encoding": "identity"}
                ) as response,
            ):
                response.raise_for_status()
                body = await _bounded_body(response)
            self._jwks = _keys_of(orjson.loads(body))  # orjson: depth-limited, no recursion
            logger.info("JWKS fetched keys=%d", len(self._jwks))
        except (
            aiohttp.ClientError, TimeoutError, JwksRefused,
            ValueError, TypeError, KeyError, RecursionError, OverflowError,
        ) as exc:  # fmt: skip
            logger.warning("JWKS unavailable (keeping %d cached keys) error=%s",
                           len(self._jwks), type(exc).__name__)  # fmt: skip
        finally:
            self._fetching = None

    async def close(self) -> None:
        """Stop a fetch under way (at shutdown)."""
        fetching = self._fetching
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)


def _now() -> float:
    return time.monotonic()


def _load_pem(pem: str) -> Any:
    key = load_pem_public_key(pem.replace("\\n", "\n").encode())
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("JWT_PUBLIC_KEY must be an RSA or a P-256 (ES256) public key")


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """The body, if it is at most JWKS_MAX_BYTES; JwksRefused as soon as it is not (a
    declared length is believed, so a huge one is refused before reading a byte)."""
    if response.content_length is not None and response.content_length > JWKS_MAX_BYTES:
        raise JwksRefused("key set too large")
    body = bytearray()
    async for chunk in response.content.iter_chunked(65_536):
        body += chunk
        if len(body) > JWKS_MAX_BYTES:
            raise JwksRefused("key set too large")
    return bytes(body)


def _keys_of(document: Any) -> dict[str, tuple[Any, str]]:
    """kid -> (public key, the one algorithm its type allows): RSA RS256, EC P-256 ES256.
    JwksRefused for a document that is not a key set, or has more than JWKS_MAX_KEYS."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksRefused("not a key set")
    if len(entries) > JWKS_MAX_KEYS:
        raise JwksRefused("too many keys")
    keys: dict[str, tuple[Any, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        kind = entry.get("kty")
        algorithm = (
            "RS256"
            if kind == "RSA"
            else "ES256"
            if kind == "EC" and entry.get("crv") == "P-256"
            else None
        )
        if algorithm is None or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = (jwt.PyJWK(entry, algorithm).key, algorithm)
        except (jwt.InvalidKeyError, jwt.PyJWKError, ValueError, TypeError, KeyError):
            continue
    return keys


def _identity(claims: dict[str, Any]) -> Identity | None:
    user, expires = claims.get("sub"), claims.get("exp")
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_CHARS:
        return None  # never cut: two long subs must not become one user
    if not isinstance(expires, (int, float)):
        return None
    symbols = claims.get("symbols")
    allowed = None
    if symbols is not None:
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            return None
        allowed = SymbolPatterns(symbols)
    cap = claims.get("max_symbols")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
        return None
    return Identity(user, float(expires), Entitlements(allowed, cap))
