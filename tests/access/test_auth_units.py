"""Token verification and a token's life on a connection, without a server: what
auth.py accepts and refuses under each key source, and client_auth.py's deadlines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stock_gateway.access.token_session import ClientAuth
from stock_gateway.access.tokens import Authenticator, AuthFailed, Identity
from stock_gateway.settings import ConfigError, Settings
from tests.support.tokens import EC_KEY, OTHER_RSA_KEY, RSA_KEY, SECRET, public_pem


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "exp": now + 600, "iat": now, **overrides}


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, as an attacker would (PyJWT refuses to make these)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(orjson.dumps(header))}.{part(orjson.dumps(payload))}"
    return f"{signing_input}.{part(signature)}"


def hs256_forged_with(key: bytes, payload: dict[str, Any]) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    unsigned = forge(header, payload).rsplit(".", 1)[0]
    signature = hmac.new(key, unsigned.encode(), hashlib.sha256).digest()
    return forge(header, payload, signature)


async def verify(settings: Settings, token: str) -> Identity:
    return await Authenticator(settings).verify(token)


async def test_each_static_key_source_accepts_its_own_tokens() -> None:
    cases = [
        (Settings(jwt_secret=SECRET), jwt.encode(claims(), SECRET, algorithm="HS256")),
        (
            Settings(jwt_public_key=public_pem(RSA_KEY)),
            jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
        ),
        (
            Settings(jwt_public_key=public_pem(EC_KEY).replace("\n", "\\n")),  # escaped, as in .env
            jwt.encode(claims(), EC_KEY, algorithm="ES256"),
        ),
    ]
    for settings, token in cases:
        identity = await verify(settings, token)
        assert identity.user == "alice"
        assert identity.expires_at == pytest.approx(time.time() + 600, abs=5)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("expired", "expired"),
        ("not yet valid", "invalid"),
        ("wrong audience", "invalid"),
        ("wrong issuer", "invalid"),
        ("no audience", "invalid"),
        ("wrong signature", "invalid"),
        ("alg none", "invalid"),
        ("HS256 signed with the public key", "invalid"),
        ("no exp", "invalid"),
        ("no sub", "invalid"),
        ("entitlements not a list", "invalid"),
        ("garbage", "invalid"),
        ("too long", "invalid"),
    ],
)
async def test_bad_tokens_are_refused_saying_only_expired_or_invalid(
    name: str, reason: str
) -> None:
    settings = Settings(
        jwt_public_key=public_pem(RSA_KEY), jwt_audience="gw", jwt_issuer="app", jwt_leeway=0
    )
    good = {"aud": "gw", "iss": "app"}
    tokens = {
        "expired": jwt.encode(claims(exp=int(time.time()) - 5, **good), RSA_KEY, "RS256"),
        "not yet valid": jwt.encode(claims(nbf=int(time.time()) + 60, **good), RSA_KEY, "RS256"),
        "wrong audience": jwt.encode(claims(aud="other", iss="app"), RSA_KEY, "RS256"),
        "wrong issuer": jwt.encode(claims(aud="gw", iss="evil"), RSA_KEY, "RS256"),
        "no audience": jwt.encode(claims(iss="app"), RSA_KEY, "RS256"),
        "wrong signature": jwt.encode(claims(**good), OTHER_RSA_KEY, "RS256"),
        "alg none": forge({"alg": "none", "typ": "JWT"}, claims(**good)),
        # The classic confusion: the verifier's public key used as an HMAC secret.
        "HS256 signed with the public key": hs256_forged_with(
            public_pem(RSA_KEY).encode(), claims(**good)
        ),
        "no exp": jwt.encode({"sub": "alice", **good}, RSA_KEY, "RS256"),
        "no sub": jwt.encode({"exp": int(time.time()) + 60, **good}, RSA_KEY, "RS256"),
        "entitlements not a list": jwt.encode(claims(symbols="AAPL", **good), RSA_KEY, "RS256"),
        "garbage": "not.a.token",
        "too long": "x" * 10_000,
    }
    with pytest.raises(AuthFailed) as refused:
        await verify(settings, tokens[name])
    assert refused.value.reason == reason
    assert str(refused.value) == reason  # nothing of the token, nothing of which check


async def test_an_hmac_gateway_refuses_rs256_tokens() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    with pytest.raises(AuthFailed):
        await verify(Settings(jwt_secret=SECRET), token)


async def test_entitlement_claims_become_entitlements() -> None:
    token = jwt.encode(
        claims(symbols=["AAPL", "binance:*"], max_symbols=3), SECRET, algorithm="HS256"
    )
    identity = await verify(Settings(jwt_secret=SECRET), token)
    allowed = identity.entitlements
    assert allowed.allow("AAPL") and allowed.allow("BINANCE:BTCUSDT")
    assert not allowed.allow("MSFT")
    assert allowed.symbol_cap(50) == 3 and allowed.symbol_cap(2) == 2
    plain = await verify(Settings(jwt_secret=SECRET), jwt.encode(claims(), SECRET, "HS256"))
    assert plain.entitlements.allow("ANYTHING") and plain.entitlements.symbol_cap(50) == 50


def test_only_one_way_of_authenticating_may_be_configured() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_TOKEN, JWT_SECRET"):
        Settings(gateway_token="t", jwt_secret=SECRET)
    with pytest.raises(ConfigError, match="JWT_SECRET, JWT_JWKS_URL"):
        Settings(jwt_secret=SECRET, jwt_jwks_url="http://127.0.0.1:1/jwks")
    assert Settings().auth_mode == "none"
    assert Settings(gateway_token="t").auth_mode == "token"
    assert Settings(jwt_jwks_url="http://127.0.0.1:1/jwks").auth_mode == "jwt"


def test_a_public_key_of_another_kind_is_a_configuration_error() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="RSA or a P-256"):
        Authenticator(Settings(jwt_public_key=public_pem(other)))


async def test_deadlines_warn_then_expire_and_a_refresh_starts_over() -> None:
    now = time.time()
    identity = Identity("alice", now + 600)

    async def identify(token: str) -> Identity:
        users = {"fresh": "alice", "other": "mallory"}
        return Identity(users[token], time.time() + 1200)

    auth = ClientAuth(identity, identify, warning=60)
    first = auth.next_deadline()
    assert first.kind == "expiring" and first.at == pytest.approx(now + 540, abs=1)
    auth.warned()
    assert auth.next_deadline().kind == "expired"
    assert auth.next_deadline().at == pytest.approx(now + 600, abs=1)
    await auth.refresh("fresh")
    again = auth.next_deadline()
    assert again.kind == "expiring" and again.at == pytest.approx(now + 1140, abs=1)
    with pytest.raises(AuthFailed):
        await auth.refresh("other")  # another user may not take over the connection
    assert auth.identity.user == "alice"


def test_a_short_lived_token_is_warned_half_way() -> None:
    now = time.time()

    async def never(token: str) -> Identity:
        raise AssertionError("not called")

    auth = ClientAuth(Identity("alice", now + 20), never, warning=60)
    assert auth.next_deadline().at == pytest.approx(now + 10, abs=1)
