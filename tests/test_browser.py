"""The /demo page in a real headless Chromium: add a symbol, watch it tick, survive an
upstream restart. Saves a screenshot to test-artifacts/demo.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simulator import MarketSimulator, serve
from tests.conftest import TEST_KEY, Market, run_gateway, settings_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="SKIPPED LOUDLY: playwright is not installed"
)
if CHROMIUM is None:
    pytest.skip(
        "SKIPPED LOUDLY: no Chromium on this machine (.ci/run installs Debian's chromium)",
        allow_module_level=True,
    )


async def test_demo_page_streams_and_survives_an_upstream_restart() -> None:
    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    async with (
        serve(simulator) as url,
        run_gateway(settings_for(Market(simulator, url))) as gateway,
        playwright_api.async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = await browser.new_page()
            await page.goto(gateway.base_url + "/demo")
            expect = playwright_api.expect
            await expect(page.locator("#connection")).to_have_text("open", timeout=10_000)
            await expect(page.locator("#upstream")).to_have_text("connected", timeout=10_000)

            await page.fill("#symbol", "aapl")
            await page.click("button[type=submit]")
            price = page.locator('article[data-symbol="AAPL"] .price')
            await expect(price).not_to_have_text("—", timeout=10_000)
            first = await price.text_content()
            await expect(price).not_to_have_text(first or "", timeout=10_000)  # it ticks
            assert "since first seen" in (
                await page.locator('article[data-symbol="AAPL"] .change').text_content() or ""
            )

            # Finnhub restarts: the page keeps its connection and prices resume.
            connections = simulator.connection_count
            await simulator.drop_connections()
            await simulator.wait_for(lambda: simulator.connection_count > connections)
            await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())
            await expect(page.locator("#upstream")).to_have_text("connected", timeout=10_000)
            after_restart = await price.text_content()
            await expect(price).not_to_have_text(after_restart or "", timeout=10_000)
            await expect(page.locator("#connection")).to_have_text("open")

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        finally:
            await browser.close()
