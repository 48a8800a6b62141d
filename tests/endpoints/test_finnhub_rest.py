"""The REST mirror, `GET /api/v1/...`, against the real gateway on the simulator: Finnhub's
own Python client (`finnhub-python`, synchronous: run in threads) with only its base URL
changed, and aiohttp for the corners (addresses, headers, CORS)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs

import aiohttp
import finnhub
import jwt
import pytest

from stock_gateway.simulator.reference_data import company_news, profile2
from tests.support.helpers import (
    TEST_KEY,
    Client,
    GatewayUnderTest,
    Market,
    run_gateway,
    settings_for,
    trade,
)
from tests.support.tokens import SECRET

R = TypeVar("R")
CLIENTS_KEY = "clients-own-finnhub-key-5e1a"  # what an app written for Finnhub still sends


def finnhub_client(gateway: GatewayUnderTest, api_key: str = CLIENTS_KEY) -> finnhub.Client:
    client = finnhub.Client(api_key=api_key)
    client.API_URL = gateway.base_url + "/api/v1"  # the one change an app makes
    return client


async def call(method: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """One call of the synchronous client, in a thread, bounded in time."""
    async with asyncio.timeout(30):
        return await asyncio.to_thread(method, *args, **kwargs)


async def refused(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The FinnhubAPIException a call raises: its status code and the `error` it read."""
    with pytest.raises(finnhub.FinnhubAPIException) as raised:
        await call(method, *args, **kwargs)
    return raised.value


def mirror(market: Market, **overrides: Any) -> Any:
    return settings_for(market, rest_enabled=True, **overrides)


def calls_to(market: Market, path: str) -> int:
    return sum(1 for _, called, _, _ in market.simulator.rest_calls.log if called == path)


@pytest.mark.slow  # the third-party client's blocking calls in a thread
async def test_finnhubs_python_client_reads_quotes_status_profile_news_and_candles(
    market: Market,
) -> None:
    async with run_gateway(mirror(market)) as gateway:
        ws = await gateway.connect()
        await ws.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        now = int(time.time())
        trades = [
            trade("AAPL", 190.5, timestamp=now * 1000 - 120_000),
            trade("AAPL", 191.25, timestamp=now * 1000 - 1_000),
        ]
        await market.simulator.send_trades(trades)
        await ws.expect("price_update", skip=("status", "market", "quote"))
        await ws.expect("price_update", skip=("status", "market", "quote"))
        client = finnhub_client(gateway)

        # /quote: the gateway's quote, in Finnhub's shape and key order.
        quote = await call(client.quote, "AAPL")
        assert list(quote) == ["c", "d", "dp", "h", "l", "o", "pc", "t"]
        expected = market.simulator.book.quote_of("AAPL")
        assert {**quote, "t": 0} == {**expected, "t": 0}
        assert abs(quote["t"] - now) <= 2  # the scripted market's "now" at its fetch
        assert await call(client.quote, "ZZNOSUCH") == {
            "c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0,
        }  # fmt: skip
        assert market.simulator.rest_calls.of("/quote", "AAPL") == 1  # the subscribe's, shared

        # The market status: the market watch's poll, not another call.
        polls = calls_to(market, "/stock/market-status")
        status = await call(client.market_status, exchange="US")
        assert status["exchange"] == "US" and status["isOpen"] is True
        assert status["session"] == "regular" and status["holiday"] is None
        assert status["timezone"] == "America/New_York" and abs(status["t"] - now) < 60
        assert calls_to(market, "/stock/market-status") == polls

        # Reference data, forwarded (through the doubled slash Finnhub's client sends).
        assert await call(client.company_profile2, symbol="AAPL") == profile2({"symbol": "AAPL"})
        news = await call(client.company_news, "AAPL", _from="2024-06-01", to="2024-06-03")
        assert news == company_news({"symbol": "AAPL", "from": "2024-06-01", "to": "2024-06-03"})
        days = {datetime.fromtimestamp(item["datetime"], UTC).date().isoformat() for item in news}
        assert days == {"2024-06-01", "2024-06-02", "2024-06-03"}
        forwarded = market.simulator.rest_calls.carried[-1]
        assert forwarded.path == "/api/v1/company-news"
        assert parse_qs(forwarded.query) == {
            "from": ["2024-06-01"], "symbol": ["AAPL"], "to": ["2024-06-03"],
        }  # fmt: skip

        # Candles: the gateway's own bars, never forwarded.
        candles = await call(client.stock_candles, "AAPL", "1", now - 3600, now + 60)
        assert candles["s"] == "ok"
        assert candles["t"] == [(now - 120) // 60 * 60, (now - 1) // 60 * 60]
        assert candles["c"] == [190.5, 191.25] and candles["v"] == [100, 100]
        five = await call(client.stock_candles, "AAPL", "5", now - 3600, now + 60)
        assert five["s"] == "ok" and five["c"][-1] == 191.25
        later = await call(client.stock_candles, "AAPL", "1", now - 60, now + 60)
        assert later["t"] == [(now - 1) // 60 * 60]  # `from` filters, the open candle last
        assert await call(client.stock_candles, "MSFT", "1", now - 3600, now) == {"s": "no_data"}
        for resolution in ("15", "30", "60", "D"):  # every interval the gateway builds
            longer = await call(client.stock_candles, "AAPL", resolution, now - 86400, now + 60)
            assert longer["s"] == "ok" and longer["c"][-1] == 191.25, resolution
        weekly = await refused(client.stock_candles, "AAPL", "W", now - 3600, now)
        assert weekly.status_code == 422 and "resolution" in weekly.message
        assert calls_to(market, "/stock/candle") == 0


@pytest.mark.slow  # a slow upstream answer held while thirty requests wait
async def test_thirty_identical_profile_requests_make_one_upstream_call(market: Market) -> None:
    async with run_gateway(mirror(market)) as gateway:
        clients = [finnhub_client(gateway) for _ in range(30)]  # one session per thread
        profiles = await asyncio.gather(
            *(call(client.company_profile2, symbol="MSFT") for client in clients)
        )
        assert all(profile == profile2({"symbol": "MSFT"}) for profile in profiles)
        assert calls_to(market, "/stock/profile2") == 1
        await asyncio.sleep(1.0)  # the scenario itself: the same request a second later
        assert await call(clients[0].company_profile2, symbol="MSFT") == profiles[0]
        assert calls_to(market, "/stock/profile2") == 1
        # The client's token is no part of the request: another key, the same answer.
        other = finnhub_client(gateway, api_key="somebody-else")
        assert await call(other.company_profile2, symbol="MSFT") == profiles[0]
        assert calls_to(market, "/stock/profile2") == 1

        health = await gateway.health()
        mirrored = health["finnhub_rest"]
        assert mirrored["forwarded"] == 1
        assert mirrored["cache_hits"] + mirrored["coalesced"] == 31
        assert mirrored["cache_hits"] >= 2
        async with gateway.session.get(gateway.base_url + "/metrics") as response:
            metrics = await response.text()
        assert "gateway_finnhub_rest_forwarded_total 1.0" in metrics
        hits = f"gateway_finnhub_rest_cache_hits_total {mirrored['cache_hits']:.1f}"
        assert hits in metrics
        coalesced = f"gateway_finnhub_rest_coalesced_total {mirrored['coalesced']:.1f}"
        assert coalesced in metrics


async def test_an_unlisted_endpoint_is_never_forwarded(market: Market) -> None:
    async with run_gateway(mirror(market)) as gateway:
        client = finnhub_client(gateway)
        refusal = await refused(client.company_executive, "AAPL")
        assert refusal.status_code == 403
        assert refusal.message == "You don't have access to this resource."
        premium = await refused(client.financials, "AAPL", "bs", "annual")
        assert premium.status_code == 403
        async with gateway.session.get(gateway.base_url + "/api/v1/../../admin") as response:
            assert response.status in (403, 404)
        assert market.simulator.rest_calls.log == [
            entry for entry in market.simulator.rest_calls.log if entry[1] == "/stock/market-status"
        ]  # only the market watch's polls reached Finnhub
        metrics = await gateway.health()
        assert metrics["finnhub_rest"]["refusals"]["not_allowed"] == 2


async def test_a_listed_premium_endpoint_passes_finnhubs_refusal_on_and_keeps_the_key_working(
    market: Market,
) -> None:
    settings = mirror(market, finnhub_rest_allow=("stock/executive", "stock/profile2"))
    async with run_gateway(settings) as gateway:
        client = finnhub_client(gateway)
        refusal = await refused(client.company_executive, "AAPL")
        assert refusal.status_code == 403  # Finnhub's own answer, passed on
        assert calls_to(market, "/stock/executive") == 1
        again = await refused(client.company_executive, "AAPL")  # errors are not cached
        assert again.status_code == 403 and calls_to(market, "/stock/executive") == 2
        # Finnhub's 403 for a resource says nothing of the key: nothing is paused.
        assert await call(client.company_profile2, symbol="AAPL") == profile2({"symbol": "AAPL"})
        assert (await gateway.health())["rest"] == "ok"


async def test_the_key_travels_only_in_the_upstream_header(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with run_gateway(mirror(market)) as gateway:
        client = finnhub_client(gateway)
        seen.append(str(await call(client.company_profile2, symbol="AAPL")))
        seen.append(str(await call(client.general_news, "general")))
        seen.append(str(await call(client.quote, "NVDA")))
        seen.append(str(await call(client.company_basic_financials, "AAPL", "all")))
        seen.append(str((await refused(client.company_executive, "AAPL")).message))
        headers = {"X-Finnhub-Token": CLIENTS_KEY, "Authorization": f"Bearer {CLIENTS_KEY}"}
        url = gateway.base_url + "/api/v1/stock/peers?symbol=AAPL&token=" + CLIENTS_KEY
        async with gateway.session.get(url, headers=headers) as response:
            assert response.status == 200
            seen.append(await response.text())
        for path in ("/health", "/metrics", "/docs"):
            async with gateway.session.get(gateway.base_url + path) as response:
                seen.append(await response.text())
    carried = market.simulator.rest_calls.carried
    assert {call.path for call in carried} >= {
        "/api/v1/stock/profile2", "/api/v1/news", "/api/v1/quote", "/api/v1/stock/metric",
        "/api/v1/stock/peers",
    }  # fmt: skip
    for upstream in carried:
        assert "token" not in parse_qs(upstream.query)
        assert upstream.headers["X-Finnhub-Token"] == TEST_KEY
        others = {
            name: value for name, value in upstream.headers.items() if name != "X-Finnhub-Token"
        }
        assert TEST_KEY not in upstream.query and TEST_KEY not in str(others)
        assert CLIENTS_KEY not in upstream.query and CLIENTS_KEY not in str(upstream.headers)
        assert "Authorization" not in upstream.headers
    assert market.simulator.rest_calls.tokens_in_urls == 0
    # The gateway's and its server's lines (urllib3's are the test client's own).
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert TEST_KEY not in logged and CLIENTS_KEY not in logged
    assert not any(TEST_KEY in text for text in seen)


async def test_a_gateway_credential_is_required_as_finnhubs_clients_send_it(
    market: Market,
) -> None:
    async with run_gateway(mirror(market, gateway_token="gw-secret-9")) as gateway:
        before = len(market.simulator.rest_calls.carried)
        wrong = await refused(finnhub_client(gateway).company_profile2, symbol="AAPL")
        assert wrong.status_code == 401 and wrong.message
        async with gateway.session.get(gateway.base_url + "/api/v1/quote?symbol=AAPL") as response:
            assert response.status == 401 and set(await response.json()) == {"error"}
        # Nothing forwarded (the gateway's own market-status poll may come at any moment).
        assert calls_to(market, "/stock/profile2") == calls_to(market, "/quote") == 0

        client = finnhub_client(gateway, api_key="gw-secret-9")  # its `token` parameter
        assert await call(client.company_profile2, symbol="AAPL") == profile2({"symbol": "AAPL"})
        url = gateway.base_url + "/api/v1/stock/peers?symbol=AAPL"
        async with gateway.session.get(url, headers={"X-Finnhub-Token": "gw-secret-9"}) as response:
            assert response.status == 200
        upstream = market.simulator.rest_calls.carried[before:]
        assert upstream and all("gw-secret-9" not in str(call) for call in upstream)


async def test_an_address_has_its_quota_of_uncached_calls(market: Market) -> None:
    settings = mirror(market, finnhub_rest_requests_per_address=2)
    async with run_gateway(settings) as gateway:
        base = gateway.base_url + "/api/v1/stock/profile2?symbol="
        for symbol in ("AAPL", "MSFT"):
            async with gateway.session.get(base + symbol) as response:
                assert response.status == 200
        async with gateway.session.get(base + "NVDA") as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert set(await response.json()) == {"error"}
        async with gateway.session.get(base + "AAPL") as response:
            assert response.status == 200  # cached: free
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as elsewhere,
            elsewhere.get(base + "NVDA") as response,
        ):
            assert response.status == 200  # another address has its own quota
        assert calls_to(market, "/stock/profile2") == 3


def small_plan(market: Market, window: float = 60.0) -> Any:
    """A plan of 12 calls a minute (the gateway allows itself 11), Finnhub enforcing it
    too, its "minute" `window` seconds on both sides; forwarded calls and lookups may take
    all of it between them (half each, nothing kept for subscribers), and wait at most
    2 s."""
    market.simulator.rest_rate = 12
    market.simulator.rest_window = window
    return mirror(
        market,
        finnhub_rest_rate=12,
        finnhub_rest_window=window,
        finnhub_rest_share=0.5,
        finnhub_rest_wait=2.0,
        quote_wait=2.0,
        quote_lookup_share=0.5,
        quote_subscriber_share=0.0,
        finnhub_rest_requests_per_address=100,
        quote_requests_per_address=100,
    )


async def burst(gateway: GatewayUnderTest, first: int, count: int) -> list[tuple[int, float]]:
    """`count` distinct uncached calls at once, forwarded and quotes, from 4 addresses:
    each one's status and how long its answer took; every refusal in Finnhub's shape
    with a `Retry-After`."""
    loop = asyncio.get_running_loop()

    async def one(index: int) -> tuple[int, float]:
        if index % 4 == 3:
            path = f"/api/v1/quote?symbol=ZZQ{index}"
        else:
            day = f"2024-01-{index % 28 + 1:02d}"
            path = f"/api/v1/company-news?symbol=AAPL&from=2024-01-01&to={day}&n={index}"
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{index % 4 + 1}", 0))
        started = loop.time()
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(gateway.base_url + path) as response,
        ):
            body = await response.json()
            if response.status == 429:
                assert set(body) == {"error"} and int(response.headers["Retry-After"]) >= 1
            return response.status, loop.time() - started

    return await asyncio.gather(*(one(index) for index in range(first, first + count)))


def assert_within_the_plan(
    market: Market, answers: list[tuple[int, float]], window: float = 60.0
) -> None:
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429}
    assert max(seconds for _, seconds in answers) < 2.0 + 3.0  # nobody left hanging
    log = market.simulator.rest_calls
    assert log.max_in_any_window(window) <= 12, log.log
    assert all(status != 429 for *_, status in log.log)  # the gateway never earned a 429


async def test_the_budget_holds_under_a_burst_of_distinct_uncached_calls(market: Market) -> None:
    async with run_gateway(small_plan(market)) as gateway:
        await poll_until_polled(gateway)
        answers = await burst(gateway, 0, 40)
    assert_within_the_plan(market, answers)
    statuses = [status for status, _ in answers]
    assert 0 < statuses.count(200) <= 11 and statuses.count(429) >= 29


@pytest.mark.slow  # windows of the plan on the clock, at a 6 s window
async def test_the_budget_holds_in_every_window_over_windows_of_bursts(market: Market) -> None:
    """Bursts 2.5 s apart for 7.5 s on a plan whose window is 6 s (a minute scaled down
    tenfold, FINNHUB_REST_WINDOW and the simulator alike), each with a subscriber's new
    symbols beside it (their quotes have no share of their own: only the budget bounds
    them with the rest): the windows that span two or three bursts hold too, and calls
    are made again once the window lets them."""
    window = 6.0
    async with run_gateway(small_plan(market, window)) as gateway:
        await poll_until_polled(gateway)
        watcher = await gateway.connect(local="127.0.0.5")
        reader = asyncio.create_task(drain(watcher))  # its quotes and confirmations: let go
        answers: list[tuple[int, float]] = []
        try:
            for round_number in range(4):
                if round_number:
                    await asyncio.sleep(window / 2.4)  # the scenario's pace, not a synchronisation
                symbols = [f"SUB{round_number}X{index}" for index in range(4)]
                await watcher.send({"action": "subscribe", "symbols": symbols})
                answers += await burst(gateway, 100 * round_number, 20)
        finally:
            reader.cancel()
            await asyncio.wait([reader])
    assert_within_the_plan(market, answers, window)
    made = sum(1 for *_, status in market.simulator.rest_calls.log if status == 200)
    assert made > 12  # the window moved on: later bursts got calls too
    assert any(symbol.startswith("SUB") for _, _, symbol, _ in market.simulator.rest_calls.log)


async def drain(client: Client) -> None:
    while True:
        await client.receive(timeout=30)


async def poll_until_polled(gateway: GatewayUnderTest) -> None:
    """The market watch's first poll (a call of the budget) has been made."""
    async with asyncio.timeout(5):
        while (await gateway.health())["market"] is None:  # noqa: ASYNC110 - /health has no event
            await asyncio.sleep(0.02)


async def test_entitlements_hold_for_symbol_bearing_endpoints(market: Market) -> None:
    async with run_gateway(mirror(market, jwt_secret=SECRET)) as gateway:
        entitled = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 600, "symbols": ["AAPL"]}, SECRET
        )
        client = finnhub_client(gateway, api_key=entitled)
        assert await call(client.company_profile2, symbol="AAPL") == profile2({"symbol": "AAPL"})
        refusal = await refused(client.company_profile2, symbol="MSFT")
        assert refusal.status_code == 403
        assert (await refused(client.quote, "MSFT")).status_code == 403
        now = int(time.time())
        assert (await refused(client.stock_candles, "MSFT", "1", now - 60, now)).status_code == 403
        assert await call(client.general_news, "general")  # no symbol: no entitlement asked
        unsigned = await refused(finnhub_client(gateway).general_news, "general")
        assert unsigned.status_code == 401
    assert calls_to(market, "/stock/profile2") == 1 and calls_to(market, "/quote") == 0


async def test_cors_follows_frontend_url(market: Market) -> None:
    async with run_gateway(mirror(market, frontend_url=("http://app.example",))) as gateway:
        url = gateway.base_url + "/api/v1/stock/profile2?symbol=AAPL"
        headers = {"Origin": "http://app.example"}
        async with gateway.session.get(url, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "http://app.example"
        async with gateway.session.get(url, headers={"Origin": "http://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        bad = gateway.base_url + "/api/v1/stock/profile2?symbol=%3Cbad%3E"
        async with gateway.session.get(bad) as response:
            assert response.status == 422 and set(await response.json()) == {"error"}
    assert calls_to(market, "/stock/profile2") == 1


async def test_without_rest_calls_the_mirror_says_so_and_candles_still_answer(
    market: Market,
) -> None:
    async with run_gateway(settings_for(market)) as gateway:  # REST_ENABLED=false
        root = await gateway.get_json("/")
        assert root["finnhub_rest"] == "/api/v1" and root["finnhub_websocket"] == "/"
        async with gateway.session.get(gateway.base_url + "/docs") as response:
            assert "<code>GET /api/v1/{path}</code>" in await response.text()
        client = finnhub_client(gateway)
        for method, args in ((client.quote, ("AAPL",)), (client.company_peers, ("AAPL",))):
            off = await refused(method, *args)
            assert off.status_code == 503 and "REST_ENABLED" in off.message
        now = int(time.time())
        assert await call(client.stock_candles, "AAPL", "5", now - 600, now) == {"s": "no_data"}
    assert market.simulator.rest_calls.log == []


async def test_credentials_in_any_spelling_are_neither_forwarded_nor_cached(
    market: Market,
) -> None:
    async with run_gateway(mirror(market)) as gateway:
        base = gateway.base_url + "/api/v1/stock/peers?symbol=AAPL"
        for spelling in ("Token", "TOKEN", "apikey", "X-Finnhub-Token"):
            url = f"{base}&{spelling}={CLIENTS_KEY}-{spelling}"
            async with gateway.session.get(url) as response:
                assert response.status == 200
    carried = market.simulator.rest_calls.carried
    peers = [upstream for upstream in carried if upstream.path == "/api/v1/stock/peers"]
    assert len(peers) == 1  # one call: the others were the same request, from the cache
    assert CLIENTS_KEY not in peers[0].query and CLIENTS_KEY not in str(peers[0].headers)
    assert {name.casefold() for name in parse_qs(peers[0].query)} == {"symbol"}


async def test_restricted_entitlements_cannot_name_a_security_another_way(
    market: Market,
) -> None:
    async with run_gateway(mirror(market, jwt_secret=SECRET)) as gateway:
        entitled = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 600, "symbols": ["AAPL"]}, SECRET
        )
        base = f"{gateway.base_url}/api/v1/stock/profile2?token={entitled}&"
        for query in (
            "isin=US5949181045",
            "CUSIP=594918104",
            "Symbol=MSFT",
            "symbol=AAPL&SYMBOL=MSFT",
        ):
            async with gateway.session.get(base + query) as response:
                assert response.status in (403, 422), (query, response.status)
        async with gateway.session.get(base + "Symbol=aapl") as response:
            assert response.status == 200  # its own symbol, however spelled
        unrestricted = jwt.encode({"sub": "bob", "exp": int(time.time()) + 600}, SECRET)
        url = f"{gateway.base_url}/api/v1/stock/profile2?token={unrestricted}&isin=US5949181045"
        async with gateway.session.get(url) as response:
            assert response.status == 200  # nothing to check against: as Finnhub answers
    carried = market.simulator.rest_calls.carried
    forwarded = [call.query for call in carried if call.path == "/api/v1/stock/profile2"]
    assert forwarded == ["symbol=AAPL", "isin=US5949181045"], forwarded
