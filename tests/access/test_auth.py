"""Per-user access against the real gateway: signed tokens by every key source (an
HMAC secret, a PEM public key, and a JWKS served by a local aiohttp server), the
auth message and its timeout, refresh with no lost update, the close at expiry,
per-user limits, entitlements, SSE, and tokens kept out of every log line."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.helpers import (
    Market,
    poll_until,
    trade,
)
from tests.support.tokens import (
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_MANY,
    EC_KEY,
    OTHER_RSA_KEY,
    RSA_KEY,
    SECRET,
    closed_with,
    handshake_status,
    jwk,
    jwt_gateway,
    key_server,
    open_socket,
    public_pem,
    signed_in,
    streams,
    token,
)


async def test_a_token_in_the_first_message_lets_a_user_stream(market: Market) -> None:
    async with jwt_gateway(market) as gateway:
        client = await open_socket(gateway)
        await client.send({"action": "auth", "token": token("alice")})
        authenticated = await client.receive()
        assert authenticated == {
            "type": "auth",
            "status": "authenticated",
            "user": "alice",
            "expires_in": pytest.approx(600, abs=2),
        }
        assert (await client.receive())["type"] == "connection"
        await client.subscribe("AAPL")
        await streams(market, client, "AAPL", 101.5)
        health = await gateway.health()
        assert health["auth"] == "jwt" and health["users"] == 1


@pytest.mark.parametrize("source", ["public RSA key", "public EC key", "JWKS (RSA and EC)"])
async def test_tokens_verify_under_every_key_source(market: Market, source: str) -> None:
    async with key_server() as keys:
        keys.keys = [jwk("rsa-1", RSA_KEY), jwk("ec-1", EC_KEY)]
        overrides = {
            "public RSA key": {"jwt_public_key": public_pem(RSA_KEY)},
            "public EC key": {"jwt_public_key": public_pem(EC_KEY)},
            "JWKS (RSA and EC)": {"jwt_jwks_url": keys.url},
        }[source]
        signing: dict[str, list[tuple[Any, str | None]]] = {
            "public RSA key": [(RSA_KEY, None)],
            "public EC key": [(EC_KEY, None)],
            "JWKS (RSA and EC)": [(RSA_KEY, "rsa-1"), (EC_KEY, "ec-1")],
        }
        async with jwt_gateway(market, **overrides, jwt_audience="gw", jwt_issuer="app") as gateway:
            for index, (key, kid) in enumerate(signing[source]):
                extra: dict[str, Any] = {"kid": kid} if kid else {}
                signed = token(f"user-{index}", key=key, aud="gw", iss="app", **extra)
                symbol = ["AAPL", "MSFT"][index]  # no snapshot from the round before
                by_message = await signed_in(gateway, signed)
                await by_message.subscribe(symbol)
                by_query = await open_socket(gateway, f"?token={signed}")
                first = await by_query.receive()
                assert first["type"] == "auth" and first["user"] == f"user-{index}"
                await by_query.expect("connection")
                await by_query.subscribe(symbol)
                await market.simulator.send_trades([trade(symbol, 50.0 + index)])
                for client in (by_message, by_query):
                    update = await client.expect("price_update")
                    assert update["data"]["price"] == 50.0 + index
                # A token the configuration does not accept (HS256) is refused.
                hs256 = token(key=SECRET, aud="gw", iss="app")
                assert await handshake_status(gateway, f"?token={hs256}") == (401, "token invalid")
        if source.startswith("JWKS"):
            assert keys.requests == 1  # fetched once, then cached


async def test_bad_tokens_get_auth_failed_then_4003_and_401_at_the_handshake(
    market: Market,
) -> None:
    async with jwt_gateway(market) as gateway:
        for bad, said in (
            (token(lifetime=-10), "token expired"),
            (token(key="another-secret-of-sufficient-length-000000"), "token invalid"),
            (token(nbf=int(time.time()) + 120), "token invalid"),
        ):
            client = await open_socket(gateway)
            await client.send({"action": "auth", "token": bad})
            error = await client.receive()
            assert error["type"] == "error" and error["code"] == "auth_failed"
            assert error["message"] == said
            assert await closed_with(client) == CLOSE_AUTH_FAILED
            assert await handshake_status(gateway, f"?token={bad}") == (401, said)
        refusals = (await gateway.health())["refusals"]
        assert refusals["auth_expired"] == 2 and refusals["auth_invalid"] == 4


@pytest.mark.slow  # the first message's deadline
async def test_nothing_is_served_before_the_token_and_silence_times_out(
    market: Market,
) -> None:
    async with jwt_gateway(market, auth_timeout=0.5) as gateway:
        client = await open_socket(gateway)
        await client.send({"action": "subscribe", "symbols": ["AAPL"]})
        required = await client.receive()
        assert required["type"] == "error" and required["code"] == "auth_required"
        started = time.monotonic()
        timed_out = await client.receive()
        assert timed_out["type"] == "error" and timed_out["code"] == "auth_timeout"
        assert await closed_with(client) == CLOSE_AUTH_TIMEOUT
        assert 0.2 < time.monotonic() - started < 2.0
        assert (await gateway.health())["symbols"] == []  # the early subscribe did nothing


@pytest.mark.slow  # waits for tokens to expire
async def test_a_refresh_before_expiry_keeps_the_stream_without_a_gap(market: Market) -> None:
    async with jwt_gateway(market, auth_expiry_warning=1) as gateway:
        client = await signed_in(gateway, token(lifetime=3))
        first_expiry = time.time() + 3
        await client.subscribe("AAPL")
        expiring = await client.expect("auth")
        assert expiring["status"] == "expiring" and expiring["expires_in"] <= 2
        sent: list[float] = []
        received: list[float] = []
        # Trades flow through the refresh and past the first token's expiry.
        await client.send({"action": "auth", "token": token(lifetime=60)})
        price = 200.0
        while time.time() < first_expiry + 1.0:
            price += 0.01
            sent.append(round(price, 2))
            await market.simulator.send_trades([trade("AAPL", sent[-1])])
            while True:
                message = await client.receive()
                if message["type"] == "price_update":
                    received.append(message["data"]["price"])
                    break
                assert message["type"] == "auth" and message["status"] == "authenticated"
        assert received == sent  # nothing lost, nothing closed at the old expiry
        assert client.ws.close_code is None


@pytest.mark.slow  # waits for tokens to expire
async def test_an_unrenewed_token_is_warned_then_closed_with_4001(market: Market) -> None:
    async with jwt_gateway(market, auth_expiry_warning=1) as gateway:
        client = await signed_in(gateway, token(lifetime=2))
        expiring = await client.expect("auth")
        assert expiring["status"] == "expiring"
        expired = await client.expect("auth")
        assert expired == {"type": "auth", "status": "expired", "user": "alice", "expires_in": 0}
        assert await closed_with(client) == CLOSE_TOKEN_EXPIRED


async def test_a_refresh_may_not_change_the_user(market: Market) -> None:
    async with jwt_gateway(market) as gateway:
        client = await signed_in(gateway, token("alice"))
        await client.send({"action": "auth", "token": token("mallory")})
        error = await client.expect("error")
        assert error["code"] == "auth_failed"
        assert await closed_with(client) == CLOSE_AUTH_FAILED


async def test_parallel_streams_cannot_pass_the_per_user_limit_together(market: Market) -> None:
    async with jwt_gateway(market, max_connections_per_user=2) as gateway:
        headers = {"Authorization": f"Bearer {token('alice')}"}
        url = f"{gateway.base_url}/stream?symbols=AAPL"
        responses = await asyncio.gather(
            *(gateway.session.get(url, headers=headers) for _ in range(6))
        )
        try:
            opened = 0
            for response in responses:
                if response.status != 200:
                    assert response.status == 429
                    continue
                first = (await response.content.readline()).decode()
                if first.startswith("event: error"):
                    assert "too_many_connections" in (await response.content.readline()).decode()
                else:
                    opened += 1
            assert opened == 2
            assert (await gateway.health())["users"] == 1
        finally:
            for response in responses:
                response.close()


async def test_per_user_connection_limit(market: Market) -> None:
    async with jwt_gateway(market, max_connections_per_user=2) as gateway:
        held = [await signed_in(gateway, token("alice")) for _ in range(2)]
        third = await open_socket(gateway)
        await third.send({"action": "auth", "token": token("alice")})
        error = await third.receive()
        assert error["code"] == "too_many_connections"
        assert await closed_with(third) == CLOSE_TOO_MANY
        status, reason = await handshake_status(gateway, f"?token={token('alice')}")
        assert status == 429 and "too many connections for your user" in reason
        other_user = await signed_in(gateway, token("bob"))  # others are not affected
        assert (await gateway.health())["users"] == 2
        await held[0].ws.close()

        async def a_slot_is_free() -> bool:
            return bool((await gateway.health())["clients"] == 2)

        await poll_until(a_slot_is_free)
        await signed_in(gateway, token("alice"))
        await other_user.ws.close()
        async with gateway.session.get(gateway.base_url + "/metrics") as response:
            metrics = await response.text()
        assert 'gateway_refusals_total{reason="user_connections"} 2.0' in metrics
        assert "gateway_authenticated_users 1.0" in metrics


async def test_entitlements_limit_symbols_and_a_refresh_can_narrow_them(market: Market) -> None:
    async with jwt_gateway(market) as gateway:
        entitled = token(symbols=["AAPL", "BINANCE:*"], max_symbols=2)
        client = await signed_in(gateway, entitled)
        wanted = ["AAPL", "MSFT", "BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]
        await client.send({"action": "subscribe", "symbols": wanted})
        errors = [await client.expect("error") for _ in range(2)]
        assert {error["code"]: error["symbols"] for error in errors} == {
            "forbidden_symbol": ["MSFT"],  # not entitled
            "too_many_symbols": ["BINANCE:ETHUSDT"],  # entitled, but over max_symbols
        }
        subscribed = await client.expect("subscription")
        assert subscribed["symbols"] == ["AAPL", "BINANCE:BTCUSDT"]
        await client.send({"action": "auth", "token": token(symbols=["AAPL"])})
        dropped = await client.expect("error")
        assert dropped["code"] == "forbidden_symbol"
        assert dropped["symbols"] == ["BINANCE:BTCUSDT"]
        unsubscribed = await client.expect("subscription")
        assert unsubscribed == {
            "type": "subscription",
            "status": "unsubscribed",
            "symbols": ["BINANCE:BTCUSDT"],
        }
        assert (await client.expect("auth"))["status"] == "authenticated"
        await streams(market, client, "AAPL", 123.25)
        assert (await gateway.health())["symbols"] == ["AAPL"]


async def test_key_rotation_is_picked_up_at_most_once_a_minute_and_an_outage_keeps_users(
    market: Market,
) -> None:
    async with key_server() as keys:
        keys.keys = [jwk("k1", EC_KEY)]
        async with jwt_gateway(market, jwt_jwks_url=keys.url) as gateway:
            alice = await signed_in(gateway, token("alice", key=EC_KEY, kid="k1"))
            await alice.subscribe("AAPL")
            assert keys.requests == 1
            # The provider rotates to a new key. Right after a fetch, an unknown kid is
            # refused without asking again (at most one refetch a minute) ...
            new_key = OTHER_RSA_KEY
            keys.keys = [jwk("k1", EC_KEY), jwk("k2", new_key)]
            early = await open_socket(gateway)
            await early.send({"action": "auth", "token": token("bob", key=new_key, kid="k2")})
            assert (await early.receive())["code"] == "auth_failed"
            assert keys.requests == 1
            # ... and once that minute has passed, it is fetched and accepted.
            gateway.gateway.running.admission.authenticator.jwks_refresh_seconds = 0.0
            bob = await signed_in(gateway, token("bob", key=new_key, kid="k2"))
            assert keys.requests == 2
            # The provider goes down: connected users keep streaming, cached keys still
            # verify, an unknown kid is refused quickly, and nobody is dropped.
            keys.failing = True
            await bob.subscribe("AAPL")
            stranger = await open_socket(gateway)
            unknown = ec.generate_private_key(ec.SECP256R1())
            await stranger.send({"action": "auth", "token": token("eve", key=unknown, kid="k9")})
            assert (await stranger.receive())["code"] == "auth_failed"
            assert keys.requests == 3
            carol = await signed_in(gateway, token("carol", key=EC_KEY, kid="k1"))
            await carol.subscribe("AAPL")
            await market.simulator.send_trades([trade("AAPL", 77.7)])
            for client in (alice, bob, carol):
                assert (await client.expect("price_update"))["data"]["price"] == 77.7
            assert (await gateway.health())["users"] == 3


@pytest.mark.slow  # waits for tokens to expire
async def test_sse_takes_a_bearer_token_and_ends_at_expiry(market: Market) -> None:
    async with jwt_gateway(market, auth_expiry_warning=1) as gateway:
        url = f"{gateway.base_url}/stream?symbols=AAPL"
        async with gateway.session.get(url) as response:
            assert response.status == 401
            assert (await response.json()) == {"error": "a token is required"}
        async with gateway.session.get(url, headers={"Authorization": "Bearer nonsense"}) as bad:
            assert bad.status == 401
        headers = {"Authorization": f"Bearer {token(lifetime=2, symbols=['AAPL'])}"}
        events: list[str] = []
        async with gateway.session.get(url, headers=headers) as response:
            assert response.status == 200
            async with asyncio.timeout(6):
                async for line in response.content:  # ends when the gateway ends the stream
                    if line.startswith(b"data: "):
                        events.append(line.decode())
        auth_events = [event for event in events if '"type":"auth"' in event]
        assert '"status":"expiring"' in auth_events[0] and '"status":"expired"' in auth_events[-1]
        assert any('"type":"subscription"' in event for event in events)

        async def released() -> bool:
            health = await gateway.health()
            return bool(health["clients"] == 0 and health["users"] == 0)

        await poll_until(released)


async def test_quotes_over_http_need_a_token_too(market: Market) -> None:
    async with jwt_gateway(market) as gateway:
        async with gateway.session.get(f"{gateway.base_url}/quote/AAPL") as response:
            assert response.status == 401
        headers = {"Authorization": f"Bearer {token()}"}
        async with gateway.session.get(f"{gateway.base_url}/quote/AAPL", headers=headers) as ok:
            assert ok.status == 404  # past the token check: quotes are off in these tests
            assert "quotes are off" in (await ok.json())["error"]
        # Entitlements hold over HTTP too.
        narrow = {"Authorization": f"Bearer {token(symbols=['AAPL'])}"}
        for path in ("/quote/MSFT", "/bars/MSFT?interval=1m"):
            async with gateway.session.get(gateway.base_url + path, headers=narrow) as refused:
                assert refused.status == 403, path
                assert (await refused.json())["code"] == "forbidden_symbol"
        async with gateway.session.get(f"{gateway.base_url}/bars/AAPL", headers=narrow) as ok:
            assert ok.status == 200


async def test_tokens_never_reach_the_logs_and_users_do(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with jwt_gateway(market) as gateway:
        signed = [token("alice"), token("alice", lifetime=900), token(lifetime=-5)]
        client = await signed_in(gateway, signed[0])
        await client.send({"action": "auth", "token": signed[1]})
        assert (await client.expect("auth"))["status"] == "authenticated"
        by_query = await open_socket(gateway, f"?token={signed[0]}")
        await by_query.expect("connection", skip=("auth",))
        refused = await open_socket(gateway)
        await refused.send({"action": "auth", "token": signed[2]})
        assert (await refused.receive())["code"] == "auth_failed"
        async with gateway.session.get(
            f"{gateway.base_url}/stream?symbols=AAPL&token={signed[2]}"
        ) as response:
            assert response.status == 401
        assert (await handshake_status(gateway, f"?token={signed[2]}"))[0] == 401
        for socket in (client, by_query):
            await socket.ws.close()

        async def all_gone() -> bool:
            return bool((await gateway.health())["clients"] == 0)

        await poll_until(all_gone)
    assert "user=alice" in caplog.text
    # Refusals are warnings at most: nobody can fill the error log by knocking.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    for each in signed:
        assert each not in caplog.text
        assert each.rsplit(".", 1)[1] not in caplog.text  # not even the signature


@pytest.mark.slow  # waits for a token to expire
async def test_an_expired_token_ends_the_session_on_every_surface(market: Market) -> None:
    """One token, on `/ws`, `/stream` and Finnhub's `/`: each session ends at `exp`
    (JWT_LEEWAY=0), within the same bound, the same way for all."""
    async with jwt_gateway(market, jwt_leeway=0) as gateway:
        signed = token(lifetime=3)
        expires_at = jwt.decode(signed, options={"verify_signature": False})["exp"]
        bound = expires_at + 1.5  # the expiry, plus a loaded machine's scheduling

        async def on_ws() -> float:
            client = await signed_in(gateway, signed)
            await client.subscribe("AAPL")
            assert (await client.expect("auth"))["status"] == "expiring"
            assert (await client.expect("auth"))["status"] == "expired"
            assert await closed_with(client) == CLOSE_TOKEN_EXPIRED
            return time.time()

        async def on_stream() -> float:
            url = f"{gateway.base_url}/stream?symbols=AAPL&token={signed}"
            last = b""
            async with gateway.session.get(url) as response:
                assert response.status == 200
                async for line in response.content:  # ends when the gateway ends the stream
                    last = line if line.startswith(b"data: ") else last
            assert b'"status":"expired"' in last
            return time.time()

        async def on_finnhub_dialect() -> float:
            ws = await gateway.session.ws_connect(f"{gateway.base_url}/?token={signed}")
            await ws.send_json({"type": "subscribe", "symbol": "AAPL"})
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
            assert ws.close_code == CLOSE_TOKEN_EXPIRED
            return time.time()

        async with asyncio.timeout(bound - time.time() + 3):
            ended = await asyncio.gather(on_ws(), on_stream(), on_finnhub_dialect())
        for surface, at in zip(("/ws", "/stream", "/"), ended, strict=True):
            assert expires_at - 0.2 <= at <= bound, (surface, at - expires_at)
