"""A hostile identity provider (JWT_JWKS_URL) against the real gateway: a key set too
large (declared, or streamed without a length), with too many keys, or nested 100,000
deep fails that fetch like an outage. The client whose token needed it gets a clean
refusal (never a 500), the cached keys keep verifying, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web

from stock_gateway.access.tokens import JWKS_MAX_BYTES, JWKS_MAX_KEYS, JWKS_TIMEOUT_SECONDS
from tests.support.helpers import Market
from tests.support.tokens import (
    EC_KEY,
    OTHER_RSA_KEY,
    jwk,
    jwt_gateway,
    open_socket,
    signed_in,
    streams,
    token,
)

HOSTILE = ("declared too large", "streamed too large", "too many keys", "nested deep")
STREAMED_BYTES = 64 * 1_048_576


class HostileKeyServer:
    """Serves an honest key set (kid `good`) until `hostile` is set; then that answer,
    which also carries kid `new`, so accepting it would let a `new` token in."""

    def __init__(self) -> None:
        self.hostile: str | None = None
        self.requests = 0
        self.streamed = 0  # bytes of a streamed answer written before the client left
        self.finished = False  # the whole streamed answer was written
        self.url = ""

    def honest(self) -> list[dict[str, Any]]:
        return [jwk("good", EC_KEY), jwk("new", OTHER_RSA_KEY)]

    async def jwks(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.hostile is None:
            return web.json_response({"keys": [jwk("good", EC_KEY)]})
        if self.hostile == "too many keys":
            keys = [jwk(f"k{index}", EC_KEY) for index in range(JWKS_MAX_KEYS)]
            return web.json_response({"keys": [*keys, *self.honest()]})
        if self.hostile == "nested deep":
            depth = 100_000
            return web.Response(text="[" * depth + "]" * depth, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        head = orjson.dumps({"keys": self.honest()})[:-1] + b', "pad": "'
        if self.hostile == "declared too large":
            response.content_length = 400 * 1_048_576
            await response.prepare(request)
            await response.write(head)
            await asyncio.sleep(JWKS_TIMEOUT_SECONDS * 2)  # the rest never comes
            return response
        await response.prepare(request)  # chunked: no length to refuse it by
        await response.write(head)
        chunk = b"x" * 65_536
        try:
            while self.streamed < STREAMED_BYTES:
                await response.write(chunk)
                self.streamed += len(chunk)
            await response.write(b'"}')
            self.finished = True
        except ConnectionError:
            pass  # the gateway hung up
        return response


@asynccontextmanager
async def hostile_key_server() -> AsyncIterator[HostileKeyServer]:
    server = HostileKeyServer()
    app = web.Application()
    app.router.add_get("/jwks.json", server.jwks)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("answer", HOSTILE)
async def test_a_hostile_key_set_is_refused_and_the_cached_keys_stay(
    market: Market, answer: str
) -> None:
    async with hostile_key_server() as keys, jwt_gateway(market, jwt_jwks_url=keys.url) as gateway:
        alice = await signed_in(gateway, token("alice", key=EC_KEY, kid="good"))
        await alice.subscribe("AAPL")
        assert keys.requests == 1
        authenticator = gateway.gateway.running.admission.authenticator
        authenticator.jwks_refresh_seconds = 0.0  # an unknown kid refetches at once
        keys.hostile = answer
        loop = asyncio.get_running_loop()

        # Over HTTP: a clean 401, never a 500 with a traceback.
        started = loop.time()
        bearer = {"Authorization": f"Bearer {token('bob', key=OTHER_RSA_KEY, kid='new')}"}
        async with gateway.session.get(f"{gateway.base_url}/quote/AAPL", headers=bearer) as bob:
            assert bob.status == 401, await bob.text()
            assert await bob.json() == {"error": "token invalid"}
        # Refused on sight, not after waiting JWKS_TIMEOUT_SECONDS for the rest of it.
        assert loop.time() - started < JWKS_TIMEOUT_SECONDS / 2
        assert keys.requests == 2
        if answer == "streamed too large":
            assert not keys.finished
            # What the gateway read before it hung up, plus what the sockets buffered.
            assert keys.streamed < STREAMED_BYTES / 4 and JWKS_MAX_BYTES < STREAMED_BYTES / 4

        # Over the WebSocket: the auth refusal the protocol documents.
        carol = await open_socket(gateway)
        await carol.send({"action": "auth", "token": token("carol", key=OTHER_RSA_KEY, kid="new")})
        assert (await carol.receive())["code"] == "auth_failed"
        assert keys.requests == 3

        # The cached key still verifies, and everyone connected keeps streaming.
        dave = await signed_in(gateway, token("dave", key=EC_KEY, kid="good"))
        await dave.subscribe("AAPL")
        await streams(market, alice, "AAPL", 42.5)
        assert (await dave.expect("price_update"))["data"]["price"] == 42.5
        started = loop.time()
        health = await gateway.health()
        assert health["status"] == "ok" and health["users"] == 2
        assert loop.time() - started < 1.0
