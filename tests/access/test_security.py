"""What the gateway refuses, each against the real server: origins, tokens, sizes,
symbol caps, request rates, connection counts, and clients that stopped answering."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
import yarl

from bench.stuck import open_never_reading_client
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


async def handshake_status(
    gateway: GatewayUnderTest, path: str = "/ws", *, encoded: bool = False, **kwargs: Any
) -> int:
    """The HTTP status of a WebSocket handshake: 101 when it was accepted."""
    url: Any = gateway.ws_url.replace("/ws", path)
    if encoded:
        url = yarl.URL(url, encoded=True)
    try:
        ws = await gateway.session.ws_connect(url, **kwargs)
    except aiohttp.WSServerHandshakeError as refused:
        return refused.status
    await ws.close()
    return 101


async def close_code_unanswered(client: Client) -> int:
    """The close code the server ends with; the oversized ping must get no pong first."""
    async with asyncio.timeout(5):
        while (closing := await client.ws.receive()).type is aiohttp.WSMsgType.TEXT:
            assert '"pong"' not in closing.data  # the oversized message was not served
    assert closing.type is aiohttp.WSMsgType.CLOSE
    code: int = closing.data
    return code


async def test_origin_check(market: Market) -> None:
    settings = settings_for(market, frontend_url=("https://app.example",))
    async with run_gateway(settings) as gateway:
        assert await handshake_status(gateway, origin="https://app.example") == 101
        assert await handshake_status(gateway, origin="https://evil.example") == 403
        assert await handshake_status(gateway, origin="null") == 403
        assert await handshake_status(gateway) == 101  # no Origin: not a browser
        # A DNS-rebinding page sets Host to its own name too: a DNS name is never trusted
        # from the request itself, only from FRONTEND_URL.
        spoofed = {"Host": "evil.example"}
        assert await handshake_status(gateway, origin="http://evil.example", headers=spoofed) == 403
        # The gateway's own origin by IP address (its /demo page, Finnhub's example
        # client) needs no configuration: no rebinding page can be served from it.
        assert await handshake_status(gateway, origin=gateway.base_url) == 101
    async with run_gateway(settings_for(market, require_origin=True)) as strict:
        assert await handshake_status(strict) == 403
        assert await handshake_status(strict, origin="http://localhost:3000") == 101
    async with run_gateway(settings_for(market, frontend_url=("*",))) as anyone:
        assert await handshake_status(anyone, origin="https://whatever.example") == 101


async def test_a_refused_origin_is_logged_with_the_setting_that_allows_it(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_for(market, frontend_url=("https://app.example",))
    async with run_gateway(settings) as gateway:
        assert await handshake_status(gateway, origin="http://localhost:5173") == 403
    refused = [r.getMessage() for r in caplog.records if "websocket refused" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "http://localhost:5173" in refused[0] and "FRONTEND_URL" in refused[0]


async def test_static_files_answer_cors_for_the_frontend_origins(market: Market) -> None:
    """A page on FRONTEND_URL imports /static/stock-client.js across origins: GET and
    its preflight carry Access-Control-Allow-Origin; FRONTEND_URL written as a URL (a
    trailing slash, a path) means its origin, for CORS and the /ws check alike."""
    settings = settings_for(market, frontend_url=("https://App.example/dashboard/",))
    async with run_gateway(settings) as gateway:
        script = gateway.base_url + "/static/stock-client.js"
        allowed = {"Origin": "https://app.example"}
        async with gateway.session.get(script, headers=allowed) as response:
            assert response.status == 200
            assert response.headers.get("Access-Control-Allow-Origin") == "https://app.example"
        preflight = {**allowed, "Access-Control-Request-Method": "GET"}
        async with gateway.session.options(script, headers=preflight) as response:
            assert response.status == 200
            assert response.headers.get("Access-Control-Allow-Origin") == "https://app.example"
        async with gateway.session.get(
            script, headers={"Origin": "https://evil.example"}
        ) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        assert await handshake_status(gateway, origin="https://app.example") == 101


async def test_client_token(market: Market, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "gw-token-3f9a1c"
    async with run_gateway(settings_for(market, gateway_token=secret)) as gateway:
        assert await handshake_status(gateway) == 401
        assert await handshake_status(gateway, "/ws?token=wrong") == 401
        assert await handshake_status(gateway, f"/ws?token={secret}") == 101
        # The same parameter, percent-encoded: accepted, and still never logged.
        assert await handshake_status(gateway, f"/ws?tok%65n={secret}", encoded=True) == 101
        health = await gateway.health()
    assert "/ws?token=***" in caplog.text  # the server's own access lines, token redacted
    assert secret not in caplog.text
    assert secret not in repr(health)


async def test_oversized_frame_closes_with_1009(market: Market, gateway: GatewayUnderTest) -> None:
    bystander = await gateway.connect()
    await bystander.subscribe("AAPL")
    offender = await gateway.connect()
    await offender.ws.send_str('{"action":"ping","pad":"' + "x" * 5000 + '"}')
    assert await close_code_unanswered(offender) == 1009
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await market.simulator.send_trades([trade("AAPL", 5.0)])
    assert (await bystander.expect("price_update"))["data"]["price"] == 5.0


async def test_symbols_per_client_cap(market: Market) -> None:
    async with run_gateway(settings_for(market, max_symbols_per_client=3)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.send({"action": "subscribe", "symbols": ["A", "B", "C", "D", "E"]})
        error = await client.receive()
        assert error["code"] == "too_many_symbols" and error["symbols"] == ["D", "E"]
        assert (await client.receive())["symbols"] == ["A", "B", "C"]
        await client.unsubscribe("A")
        assert (await client.subscribe("D"))["symbols"] == ["D"]


@pytest.mark.slow  # sampled turns on the real clock
async def test_distinct_upstream_symbol_cap(market: Market) -> None:
    """Past MAX_UPSTREAM_SYMBOLS nothing is refused any more (it was `symbol_limit`): the
    third symbol is served by turns on the socket, which never carries more than two."""
    market.simulator.max_symbols = 2
    # Short turns (SAMPLE_TURN_SECONDS): NVDA's comes in a fraction of a second.
    settings = settings_for(market, max_upstream_symbols=2, sample_turn_seconds=0.2)
    async with run_gateway(settings) as gateway:
        first, second = await gateway.connect(), await gateway.connect()
        await first.wait_upstream_connected()
        await first.subscribe("AAPL", "MSFT")
        await second.send({"action": "subscribe", "symbols": ["MSFT", "NVDA"]})
        assert (await second.expect("subscription"))["symbols"] == ["MSFT", "NVDA"]
        assert (await gateway.health())["symbols"] == ["AAPL", "MSFT", "NVDA"]
        # NVDA takes turns on the socket: subscribed upstream in time, never over the cap.
        await market.simulator.wait_for(
            lambda: "NVDA" in market.simulator.subscribed_symbols(), timeout=10
        )
        assert market.simulator.refused_over_cap == 0
        assert all(len(connection.symbols) <= 2 for connection in market.simulator.connections)


async def test_rate_limit_then_1008(market: Market) -> None:
    settings = settings_for(
        market, client_message_rate=5, client_message_burst=5, rate_limit_close_after=0.5
    )
    async with run_gateway(settings) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        for _ in range(10):
            await client.send({"action": "ping"})
        replies = [(await client.receive())["type"] for _ in range(10)]
        assert replies.count("pong") >= 5 and "error" in replies
        assert replies[:5] == ["pong"] * 5
        # Keep exceeding it: closed with 1008 after the grace.
        async with asyncio.timeout(5):
            while True:
                await client.send({"action": "ping"})
                message = await client.ws.receive()
                if message.type is aiohttp.WSMsgType.CLOSE:
                    assert message.data == 1008
                    break
                assert message.type is aiohttp.WSMsgType.TEXT


@pytest.mark.slow  # a request rate measured over real time
async def test_plain_http_requests_are_paced_per_address(market: Market) -> None:
    settings = settings_for(
        market,
        http_requests_per_address=2,
        http_request_burst=5,
        rest_enabled=True,
        frontend_url=("https://app.example",),
    )
    async with run_gateway(settings) as gateway:
        hammer = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0)))
        other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.4", 0)))
        async with hammer, other:
            loop = asyncio.get_running_loop()
            started = loop.time()
            statuses: list[int] = []
            for _ in range(20):
                origin = {"Origin": "https://app.example"}
                async with hammer.get(f"{gateway.base_url}/metrics", headers=origin) as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        assert int(response.headers["Retry-After"]) >= 1
                        assert (
                            "too many requests from your address"
                            in (await response.json())["error"]
                        )
                        # Inside CORS: a page on the frontend can read why.
                        assert response.headers["Access-Control-Allow-Origin"] == origin["Origin"]
            elapsed = loop.time() - started
            assert statuses[:5] == [200] * 5  # the burst
            assert statuses.count(200) <= 5 + 2 * elapsed + 1 and statuses.count(429) >= 10
            # Its own /health and a stream still answer: they are not paced here.
            async with hammer.get(f"{gateway.base_url}/health") as response:
                assert response.status == 200
                assert response.headers.get("Retry-After") is None
            async with hammer.get(f"{gateway.base_url}/stream?symbols=AAPL") as response:
                assert response.status == 200
            # Another address has its own allowance.
            for path in ("/quote/AAPL", "/health", "/bars/AAPL"):
                async with other.get(gateway.base_url + path) as response:
                    assert response.status == 200, path
        assert (await gateway.health())["refusals"]["address_requests"] >= 10


async def test_max_clients_closes_the_extra_one_with_1013(market: Market) -> None:
    async with run_gateway(settings_for(market, max_clients=2)) as gateway:
        first, second = await gateway.connect(), await gateway.connect()
        extra = await gateway.session.ws_connect(gateway.ws_url)
        closing = await extra.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1013
        await first.ws.close()
        replacement: Client = await gateway.connect()
        await replacement.send({"action": "ping"})
        assert await replacement.expect("pong") == {"type": "pong"}
        assert not second.ws.closed


@pytest.mark.slow  # heartbeat intervals
async def test_heartbeat_drops_a_client_that_stopped_answering(market: Market) -> None:
    settings = settings_for(market, heartbeat_interval=0.2, heartbeat_timeout=0.2)
    async with run_gateway(settings) as gateway:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        # A raw client that never reads cannot answer pings: it looks half-open.
        silent = await open_never_reading_client(
            "127.0.0.1", port, '{"action":"subscribe","symbols":["AAPL"]}'
        )
        with silent:
            await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())

            async def dropped() -> bool:
                health = await gateway.health()
                return bool(health["clients"] == 0 and health["symbols"] == [])

            await poll_until(dropped)
            await market.simulator.wait_for(
                lambda: bool(market.simulator.received_of("unsubscribe"))
            )


async def test_rejected_key_shows_unauthorized(market: Market) -> None:
    async with run_gateway(settings_for(market, finnhub_api_key="revoked-key")) as gateway:
        client = await gateway.connect()
        while (await client.expect("status"))["upstream"] != "unauthorized":
            pass

        async def retried() -> bool:
            health = await gateway.health()
            return bool(health["upstream"] == "unauthorized" and health["reconnects"] >= 3)

        await poll_until(retried)
        assert market.simulator.connection_count == 0


async def test_shutdown_closes_clients_with_1012(market: Market) -> None:
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        gateway.server.should_exit = True
        closing = await client.ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1012


async def test_oversized_frame_is_refused_by_the_app_under_any_server_limit(
    market: Market,
) -> None:
    # `uvicorn gateway:app` without --ws-max-size accepts 16 MiB frames: the app checks too.
    async with run_gateway(settings_for(market), ws_max_size=16 * 1024 * 1024) as gateway:
        offender = await gateway.connect()
        await offender.ws.send_str('{"action":"ping","pad":"' + "x" * 5000 + '"}')
        assert await close_code_unanswered(offender) == 1009


def test_demo_mode_allows_its_own_page() -> None:
    demo = Settings(demo=True, port=8000)
    assert "http://localhost:8000" in demo.allowed_origins
    assert "http://localhost:8000" not in Settings(port=8000).allowed_origins


async def test_frame_size_counts_bytes_not_characters(market: Market) -> None:
    async with run_gateway(settings_for(market), ws_max_size=16 * 1024 * 1024) as gateway:
        offender = await gateway.connect()
        # 2,000 characters, 6,000 bytes in UTF-8: over the 4 KiB limit.
        await offender.ws.send_str('{"action":"ping","pad":"' + "€" * 2000 + '"}')
        assert await close_code_unanswered(offender) == 1009
