"""A page in headless Chromium for the browser tests, and where their screenshots go;
importing it skips the importing test module, loudly, without Chromium or playwright."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
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
expect = playwright_api.expect


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium, closed afterwards."""
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield await browser.new_page()
        finally:
            await browser.close()
