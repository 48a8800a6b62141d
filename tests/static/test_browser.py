"""The /demo page in a real headless Chromium: add a symbol, watch it tick, survive an
upstream restart and a gateway restart. Saves a screenshot to test-artifacts/demo.png."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import jwt
import pytest

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    chromium_page,
    expect,
    playwright_api,
)
from tests.support.helpers import TEST_KEY, Market, free_port, poll_until, run_gateway, settings_for

pytestmark = pytest.mark.slow


async def price_keeps_changing(page: Any, symbol: str) -> None:
    price = page.locator(f'article[data-symbol="{symbol}"] .price')
    await expect(price).not_to_have_text("—", timeout=10_000)
    seen = await price.text_content()
    await expect(price).not_to_have_text(seen or "", timeout=10_000)


async def test_demo_page_streams_and_survives_upstream_and_gateway_restarts() -> None:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    port = free_port()
    async with serve(simulator) as url, playwright_api.async_playwright() as playwright:
        settings = settings_for(Market(simulator, url))
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = await browser.new_page()
            async with run_gateway(settings, allow_own_origin=True, port=port) as gateway:
                await page.goto(gateway.base_url + "/demo")
                await expect(page.locator("#connection")).to_have_text("open", timeout=10_000)
                await expect(page.locator("#upstream")).to_have_text("connected", timeout=10_000)
                await expect(page.locator("#simulated")).to_be_hidden()  # not demo mode

                await page.fill("#symbol", "aapl")
                await page.click("button[type=submit]")
                await price_keeps_changing(page, "AAPL")
                change = page.locator('article[data-symbol="AAPL"] .change')
                assert "since first seen" in (await change.text_content() or "")

                # Finnhub restarts: the page keeps its connection and prices resume.
                connections = simulator.connection_count
                await simulator.drop_connections()
                await simulator.wait_for(lambda: simulator.connection_count > connections)
                await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())
                await expect(page.locator("#upstream")).to_have_text("connected")
                await price_keeps_changing(page, "AAPL")

            # The gateway itself restarts: the page reconnects and resubscribes by itself.
            await expect(page.locator("#connection")).not_to_have_text("open", timeout=10_000)
            async with run_gateway(settings, allow_own_origin=True, port=port):
                await expect(page.locator("#connection")).to_have_text("open", timeout=15_000)
                await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())
                await price_keeps_changing(page, "AAPL")
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        finally:
            await browser.close()


async def test_demo_page_starts_with_symbols_and_remembers_the_visitors_list() -> None:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with (
        serve(simulator) as url,
        chromium_page() as page,
        run_gateway(settings_for(Market(simulator, url)), allow_own_origin=True) as gw,
    ):
        cards = page.locator("article[data-symbol]")
        await page.goto(gw.base_url + "/demo")
        await expect(cards).to_have_count(3, timeout=10_000)  # a first visit: the defaults
        shown = await cards.evaluate_all("(cards) => cards.map((c) => c.dataset.symbol)")
        assert shown == ["AAPL", "MSFT", "BINANCE:BTCUSDT"]
        await price_keeps_changing(page, "BINANCE:BTCUSDT")  # the simulator trades them

        await page.fill("#symbol", "goog")
        await page.click("button[type=submit]")
        await page.click('article[data-symbol="MSFT"] .remove')
        await page.reload()
        await expect(page.locator('article[data-symbol="GOOG"]')).to_be_visible(timeout=10_000)
        await expect(page.locator('article[data-symbol="MSFT"]')).to_have_count(0)
        await expect(cards).to_have_count(3)  # AAPL, BINANCE:BTCUSDT, GOOG
        await price_keeps_changing(page, "GOOG")  # and it subscribed again


async def test_demo_mode_says_its_prices_are_simulated() -> None:
    async with playwright_api.async_playwright() as playwright:
        settings = replace(
            settings_for(Market(MarketSimulator(), "ws://127.0.0.1:9")),
            demo=True,
            finnhub_api_key="",
        )
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = await browser.new_page()
            async with run_gateway(settings, allow_own_origin=True) as gateway:
                await page.goto(gateway.base_url + "/demo")
                await expect(page.locator("#simulated")).to_be_visible(timeout=10_000)
                await expect(page.locator("#simulated")).to_contain_text("Simulated prices")
                await page.fill("#symbol", "MSFT")
                await page.click("button[type=submit]")
                await price_keeps_changing(page, "MSFT")
        finally:
            await browser.close()


async def test_a_closed_market_shows_the_last_close_and_the_session() -> None:
    simulator = MarketSimulator(rate=50, token=TEST_KEY, session="closed")
    async with serve(simulator) as url, playwright_api.async_playwright() as playwright:
        settings = settings_for(Market(simulator, url), rest_enabled=True)
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = await browser.new_page()
            async with run_gateway(settings, allow_own_origin=True) as gateway:
                await page.goto(gateway.base_url + "/demo")
                await expect(page.locator("#market")).to_have_text("closed", timeout=10_000)
                await page.fill("#symbol", "AAPL")
                await page.click("button[type=submit]")
                card = page.locator('article[data-symbol="AAPL"]')
                close = simulator.book.quote_of("AAPL")["c"]
                await expect(card.locator(".price")).to_have_text(f"{close:.2f}", timeout=5_000)
                await expect(card.locator(".source")).to_have_text("last close")
                await expect(card.locator(".change")).to_contain_text("today")
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "demo-closed.png"), full_page=True)
        finally:
            await browser.close()


async def test_event_source_streams_prices_in_the_browser() -> None:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url, playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = await browser.new_page()
            async with run_gateway(settings_for(Market(simulator, url))) as gateway:
                await page.goto(gateway.base_url + "/demo")
                update = await page.evaluate(
                    """() => new Promise((resolve, reject) => {
                        const events = new EventSource("/stream?symbols=AAPL&throttle_ms=100");
                        events.addEventListener("price_update", (event) => {
                            events.close();
                            resolve(JSON.parse(event.data));
                        });
                        setTimeout(() => reject(new Error("no price_update in 10 s")), 10000);
                    })"""
                )
                assert update["type"] == "price_update" and update["symbol"] == "AAPL"

                async def released() -> bool:  # EventSource.close() ends the stream
                    streams = (await gateway.health())["clients_by_dialect"].get("sse", 0)
                    return bool(streams == 0)  # (the /demo page keeps its own /ws client)

                await poll_until(released)
        finally:
            await browser.close()


async def test_stock_client_refreshes_its_token_in_the_browser_without_reconnecting() -> None:
    """getToken() on connect and on "expiring": the stream outlives several 3 s tokens."""
    secret = "browser-test-secret-of-sufficient-length-0123"
    issued: list[str] = []

    def issue_token() -> str:
        signed = jwt.encode(
            {"sub": "browser-user", "exp": int(time.time()) + 3}, secret, algorithm="HS256"
        )
        issued.append(signed)
        return signed

    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url, chromium_page() as page:
        settings = settings_for(
            Market(simulator, url), jwt_secret=secret, jwt_leeway=0, auth_expiry_warning=1
        )
        await page.expose_function("issueToken", issue_token)
        async with run_gateway(settings, allow_own_origin=True) as gateway:
            await page.goto(gateway.base_url + "/demo")
            result = await page.evaluate(
                """async () => {
                    const { StockClient } = await import("/static/stock-client.js");
                    return await new Promise((resolve, reject) => {
                        const states = [];
                        let late = 0;
                        const started = Date.now();
                        const client = new StockClient(`ws://${location.host}/ws`, {
                            getToken: () => window.issueToken(),
                            onStatus: (status) => states.push(status.connection),
                            onPrice: () => {
                                if (Date.now() - started > 7000 && ++late >= 5) {
                                    client.close();
                                    resolve(states);
                                }
                            },
                        });
                        client.subscribe(["AAPL"]);
                        setTimeout(() => reject(new Error(`stalled: ${states}`)), 15000);
                    });
                }"""
            )
            # One connection from start to end: never "reconnecting".
            assert result.count("connecting") == 1 and "reconnecting" not in result, result
            assert len(issued) >= 3  # connect, then a refresh before each expiry


async def test_demo_page_draws_live_candles() -> None:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url, chromium_page() as page:
        settings = settings_for(Market(simulator, url))
        async with run_gateway(settings, allow_own_origin=True) as gateway:
            await page.goto(gateway.base_url + "/demo")
            await page.fill("#symbol", "AAPL")
            await page.click("button[type=submit]")
            selector = 'article[data-symbol="AAPL"] canvas.candles'
            chart = page.locator(selector)

            async def candles_drawn(at_least: int) -> int:
                # At least: two candles can come between two looks at the page.
                await page.wait_for_function(
                    """([selector, count]) =>
                        Number(document.querySelector(selector)?.dataset.bars ?? 0) >= count""",
                    arg=[selector, at_least],
                    timeout=10_000,
                )
                return int(await chart.get_attribute("data-bars") or 0)

            # 1-second bars: a few seconds of trades make a few candles, and more come.
            first = await candles_drawn(3)
            await candles_drawn(first + 2)
            painted = await chart.evaluate(
                """(canvas) => {
                    const data = canvas.getContext("2d")
                        .getImageData(0, 0, canvas.width, canvas.height).data;
                    let colored = 0;
                    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) colored++;
                    return colored;
                }"""
            )
            assert painted > 50  # candles drawn, not an empty canvas
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "demo-candles.png"))
            candles = await gateway.get_json("/bars/AAPL?interval=1s")
            assert candles["s"] == "ok" and len(candles["t"]) >= 5


# Everything the page can show, shown: collapsed schemas would hide their own width.
WIDEST_ELEMENT = """() => {
    document.querySelectorAll("details").forEach((details) => { details.open = true; });
    let right = 0;
    for (const element of document.querySelectorAll("body *")) {
        right = Math.max(right, element.getBoundingClientRect().right);
    }
    return { scrollWidth: document.documentElement.scrollWidth, right };
}"""


@pytest.mark.parametrize("width", [1280, 400])
async def test_docs_page_fits_the_window(width: int) -> None:
    """/docs is read in a browser: no horizontal scrolling of the page, and no element
    (an endpoint's example, a schema, a long name) reaching past the window's edge."""
    simulator = MarketSimulator(token=TEST_KEY)
    async with (
        serve(simulator) as url,
        chromium_page() as page,
        run_gateway(settings_for(Market(simulator, url))) as gateway,
    ):
        await page.set_viewport_size({"width": width, "height": 900})
        await page.goto(gateway.base_url + "/docs")
        await expect(page.locator("h2").first).to_be_visible()
        measured = await page.evaluate(WIDEST_ELEMENT)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"docs-{width}.png"), full_page=True)
    assert measured["scrollWidth"] <= width, measured
    assert measured["right"] <= width, measured


async def test_demo_page_keeps_its_query_string_and_token_out_of_the_websocket_url() -> None:
    """`/demo?token=...`: the token goes in the auth message, never in /ws's URL (nor
    any of the page's query string), and leaves the address bar."""
    secret = "browser-test-secret-of-sufficient-length-0123"
    signed = jwt.encode({"sub": "demo-user", "exp": int(time.time()) + 600}, secret, "HS256")
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with serve(simulator) as url, chromium_page() as page:
        settings = settings_for(Market(simulator, url), jwt_secret=secret)
        async with run_gateway(settings, allow_own_origin=True) as gateway:
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(f"{gateway.base_url}/demo?token={signed}&throttle_ms=0")
            await price_keeps_changing(page, "AAPL")  # authenticated by the auth message
            assert sockets and all(ws == gateway.ws_url for ws in sockets), sockets
            assert signed not in page.url and "token" not in page.url, page.url
