"""Signed tokens for the access tests: the keys (an HMAC secret, RSA and EC key pairs),
tokens and JWKs made from them, a local JWKS server, and a gateway that asks for tokens
with the steps of a client signing in."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stock_gateway.settings import Settings
from tests.support.helpers import (
    Client,
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)

SECRET = "hs256-test-secret-with-enough-length-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


CLOSE_TOKEN_EXPIRED, CLOSE_AUTH_FAILED, CLOSE_AUTH_TIMEOUT, CLOSE_TOO_MANY = 4001, 4003, 4008, 4029


def token(user: str = "alice", lifetime: float = 600, key: Any = SECRET, **claims: Any) -> str:
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    algorithm = "HS256" if isinstance(key, str) else "RS256" if rsa_key else "ES256"
    headers = {"kid": claims.pop("kid")} if "kid" in claims else None
    payload = {"sub": user, "exp": int(time.time() + lifetime), **claims}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def jwk(kid: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "kid": kid, "use": "sig", "n": _b64(numbers.n), "e": _b64(numbers.e)}
    point = public.public_numbers()
    return {"kty": "EC", "kid": kid, "crv": "P-256", "x": _b64(point.x, 32), "y": _b64(point.y, 32)}


def _b64(number: int, length: int | None = None) -> str:
    raw = number.to_bytes(length or (number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class KeyServer:
    """An identity provider's JWKS endpoint on loopback, whose keys and health tests set."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.failing = False
        self.requests = 0
        self.url = ""

    async def jwks(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.failing:
            return web.Response(status=503)
        return web.json_response({"keys": self.keys})


@asynccontextmanager
async def key_server() -> AsyncIterator[KeyServer]:
    server = KeyServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


def jwt_settings(market: Market, **overrides: Any) -> Settings:
    options: dict[str, Any] = {"jwt_leeway": 0, **overrides}
    if not any(k in options for k in ("jwt_public_key", "jwt_jwks_url")):
        options.setdefault("jwt_secret", SECRET)
    return settings_for(market, **options)


@asynccontextmanager
async def jwt_gateway(market: Market, **overrides: Any) -> AsyncIterator[GatewayUnderTest]:
    async with run_gateway(jwt_settings(market, **overrides)) as gateway:

        async def upstream_connected() -> bool:
            return bool((await gateway.health())["upstream"] == "connected")

        await poll_until(upstream_connected)
        yield gateway


async def open_socket(gateway: GatewayUnderTest, query: str = "") -> Client:
    return Client(await gateway.session.ws_connect(gateway.ws_url + query))


async def signed_in(gateway: GatewayUnderTest, signed: str) -> Client:
    """A client that sent its token first, past `auth` and `connection`."""
    client = await open_socket(gateway)
    await client.send({"action": "auth", "token": signed})
    authenticated = await client.receive()
    assert authenticated["type"] == "auth" and authenticated["status"] == "authenticated"
    assert (await client.receive())["type"] == "connection"
    return client


async def handshake_status(gateway: GatewayUnderTest, query: str) -> tuple[int, str]:
    """A WebSocket handshake's refusal, as plain HTTP: its status and its reason."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with gateway.session.get(f"{gateway.base_url}/ws{query}", headers=upgrade) as response:
        return response.status, await response.text()


async def closed_with(client: Client) -> int | None:
    message = await client.ws.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    return client.ws.close_code


async def streams(market: Market, client: Client, symbol: str, price: float) -> None:
    """Fail unless a trade sent now reaches `client`."""
    await market.simulator.send_trades([trade(symbol, price)])
    update = await client.expect("price_update", skip=("status", "market", "auth"))
    assert update["symbol"] == symbol and update["data"]["price"] == price
