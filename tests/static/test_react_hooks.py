"""The React hooks as shipped (static/stock-hooks.js), in headless Chromium against the
real gateway: bundled by esbuild with the real React 18 and 19 from npm in development
mode, so strict mode runs every effect twice. The page is served from its own origin,
as a Next.js app is, and the gateway allows it through FRONTEND_URL."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support import node

# The browser set-up, and its loud skips without Chromium or playwright.
from tests.support.browser import ARTIFACTS, chromium_page, expect
from tests.support.docs_blocks import docs_code_blocks
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    GatewayUnderTest,
    Market,
    free_port,
    poll_until,
    run_gateway,
    settings_for,
)

pytestmark = pytest.mark.slow

HARNESS = PROJECT / "tests" / "react" / "harness.jsx"
# Counts every WebSocket the page opens, whoever opens it.
COUNT_SOCKETS = """
window.sockets = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) { super(...args); window.sockets += 1; }
};
"""
REACT_18 = ("--alias:react=react-18", "--alias:react-dom=react-dom-18")


def bundle(entry: Path, out: Path, *options: str) -> dict[str, Any]:
    """esbuild `entry` into out/app.js with an index.html that loads it; its metafile."""
    out.mkdir(parents=True, exist_ok=True)
    node.run(
        node.require(node.ESBUILD), entry, "--bundle", "--format=esm", "--jsx=automatic",
        '--define:process.env.NODE_ENV="development"', f"--outfile={out / 'app.js'}",
        f"--metafile={out / 'meta.json'}", "--log-level=warning", *options,
    )  # fmt: skip
    (out / "index.html").write_text(
        '<!doctype html><meta charset="utf-8"><title>app</title>'
        '<div id="root"></div><script type="module" src="app.js"></script>',
        encoding="utf-8",
    )
    meta: dict[str, Any] = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    return meta


@asynccontextmanager
async def serve_directory(root: Path) -> AsyncIterator[str]:
    """A static web server for `root` on a loopback port of its own: the app's origin."""
    app = web.Application()
    app.router.add_static("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def keeps_changing(locator: Any) -> None:
    await expect(locator).not_to_have_text("—", timeout=10_000)
    seen = await locator.text_content()
    await expect(locator).not_to_have_text(seen or "", timeout=10_000)


async def clients(gateway: GatewayUnderTest, count: int) -> None:
    async def reached() -> bool:
        return bool((await gateway.health())["clients"] == count)

    await poll_until(reached)


@pytest.mark.parametrize("react", ["19", "18"])
async def test_hooks_share_one_socket_under_strict_mode_and_follow_the_gateway(
    react: str, tmp_path: Path
) -> None:
    meta = bundle(HARNESS, tmp_path / "app", *(REACT_18 if react == "18" else ()))
    # One React in the bundle, the one under test.
    bundled = {Path(path).parts[1] for path in meta["inputs"] if path.startswith("node_modules")}
    reacts = bundled & {"react", "react-dom", "react-18", "react-dom-18"}
    assert reacts == ({"react-18", "react-dom-18"} if react == "18" else {"react", "react-dom"})

    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    port = free_port()
    async with (
        serve(simulator) as url,
        serve_directory(tmp_path / "app") as origin,
        chromium_page() as page,
    ):
        settings = replace(settings_for(Market(simulator, url)), frontend_url=(origin,))
        ws_url = f"ws://127.0.0.1:{port}/ws"
        await page.add_init_script(COUNT_SOCKETS)
        await page.goto(origin + "/index.html")
        prices = page.locator("#prices")
        aapl = page.locator('#prices [data-symbol="AAPL"]')
        async with run_gateway(settings, port=port) as gateway:
            # Mount: three components on one feed, every effect run twice.
            await page.evaluate("([url]) => window.harness.mount(url, ['AAPL'])", [ws_url])
            await expect(prices).to_have_attribute("data-connection", "open", timeout=10_000)
            await keeps_changing(aapl)
            await keeps_changing(page.locator('#first [data-symbol="AAPL"]'))
            await expect(page.locator("#bars")).not_to_have_attribute("data-count", "0")
            assert await page.evaluate("window.effects") == 2  # strict mode did double up
            assert await page.evaluate("window.sockets") == 1
            await clients(gateway, 1)

            # Subscribe more, then let a symbol go: the upstream follows, on the one socket.
            await page.evaluate("([u]) => window.harness.mount(u, ['AAPL', 'MSFT'])", [ws_url])
            await keeps_changing(page.locator('#prices [data-symbol="MSFT"]'))
            await page.evaluate("([url]) => window.harness.mount(url, ['MSFT'])", [ws_url])
            await simulator.wait_for(lambda: "AAPL" not in simulator.subscribed_symbols())
            assert "MSFT" in simulator.subscribed_symbols()
            assert await page.evaluate("window.sockets") == 1

            # Unmount: the socket closes and the upstream lets the symbol go.
            await page.evaluate("window.harness.unmount()")
            await clients(gateway, 0)
            await simulator.wait_for(lambda: not simulator.subscribed_symbols())

            # Remount: one new socket, prices again.
            await page.evaluate("([url]) => window.harness.mount(url, ['AAPL'])", [ws_url])
            await keeps_changing(aapl)
            assert await page.evaluate("window.sockets") == 2
            await clients(gateway, 1)

        # The gateway restarts: the hooks reconnect and resubscribe by themselves.
        await expect(prices).not_to_have_attribute("data-connection", "open", timeout=10_000)
        async with run_gateway(settings, port=port) as gateway:
            await expect(prices).to_have_attribute("data-connection", "open", timeout=15_000)
            await expect(prices).to_have_attribute("data-upstream", "connected")
            await keeps_changing(aapl)
            await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols())
            await clients(gateway, 1)

        # No URL anywhere: an error that says what to set.
        await page.evaluate("window.harness.mountWithoutUrl()")
        await expect(page.locator("#crash")).to_contain_text("NEXT_PUBLIC_GATEWAY_WS")


# What create-next-app writes (TypeScript, App Router, no src/), less its Next.js plugin.
NEXT_TSCONFIG = {
    "compilerOptions": {
        "target": "ES2017",
        "lib": ["dom", "dom.iterable", "esnext"],
        "allowJs": True,
        "skipLibCheck": True,
        "strict": True,
        "noEmit": True,
        "esModuleInterop": True,
        "module": "esnext",
        "moduleResolution": "bundler",
        "resolveJsonModule": True,
        "isolatedModules": True,
        "jsx": "react-jsx",
        "incremental": False,
        "paths": {"@/*": ["./*"]},
    },
    "include": ["**/*.ts", "**/*.tsx"],
    "exclude": ["node_modules"],
}
# What Next.js does around a page, in development: a client root in strict mode.
NEXT_ROOT = """import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import Page from "./app/page";

createRoot(document.getElementById("root")!).render(<StrictMode><Page /></StrictMode>);
"""


def fresh_next_app(project: Path) -> None:
    """A new App Router project as far as the page needs: its tsconfig.json, and React
    installed (the test's own node_modules, linked)."""
    project.mkdir()
    (project / "app").mkdir()
    (project / "out").mkdir()  # what the app's server serves: the build below
    (project / "tsconfig.json").write_text(json.dumps(NEXT_TSCONFIG, indent=2), encoding="utf-8")
    (project / "node_modules").symlink_to(node.NODE_MODULES, target_is_directory=True)


async def test_a_fresh_next_app_shows_live_prices_and_candles_by_following_the_docs(
    tmp_path: Path,
) -> None:
    """docs/browser-client.md's three steps, to the letter: the copy command against the
    running gateway, .env.local, the page; then type-checked, built and loaded."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("SKIPPED LOUDLY: no curl, which the documented copy command uses")
    [copy_command] = [block for block in docs_code_blocks("bash") if "stock-hooks" in block]
    [env_file] = docs_code_blocks("dotenv")
    [page_source] = docs_code_blocks("tsx")
    project = tmp_path / "my-dashboard"
    fresh_next_app(project)

    simulator = MarketSimulator(rate=40, token=TEST_KEY)
    port = free_port()
    async with (
        serve(simulator) as url,
        serve_directory(project / "out") as origin,
        chromium_page() as page,
    ):
        settings = settings_for(Market(simulator, url), rest_enabled=True, frontend_url=(origin,))
        async with run_gateway(settings, port=port) as gateway:
            gateway_host = gateway.base_url.removeprefix("http://")
            # 1. The files, fetched from the gateway's /static by the documented command.
            command = copy_command.replace("localhost:8000", gateway_host)
            process = await asyncio.create_subprocess_exec("bash", "-c", command, cwd=project)
            assert await process.wait() == 0, command
            for name in ("stock-client.js", "stock-client.d.ts", "stock-hooks.js"):
                shipped = (PROJECT / "stock_gateway" / "static" / name).read_bytes()
                assert (project / "lib" / "stock-gateway" / name).read_bytes() == shipped
            # 2. .env.local, whose NEXT_PUBLIC_ variables Next.js inlines at build time.
            env_text = env_file.replace("localhost:8000", gateway_host)
            (project / ".env.local").write_text(env_text, encoding="utf-8")
            env = dict(line.split("=", 1) for line in env_text.split())
            # 3. The page; type-checked as create-next-app configures tsc, then built.
            (project / "app" / "page.tsx").write_text(page_source, encoding="utf-8")
            (project / "next-root.tsx").write_text(NEXT_ROOT, encoding="utf-8")
            node.run(node.require(node.TSC), "--noEmit", "-p", project)
            defines = [f"--define:process.env.{k}={json.dumps(v)}" for k, v in env.items()]
            bundle(project / "next-root.tsx", project / "out", *defines)

            await page.add_init_script(COUNT_SOCKETS)
            await page.goto(origin + "/index.html")
            await expect(page.locator("#connection")).to_have_text("open", timeout=10_000)
            await expect(page.locator("#upstream")).to_have_text("connected")
            await keeps_changing(page.locator('tr[data-symbol="AAPL"] .price'))
            await keeps_changing(page.locator('tr[data-symbol="BINANCE:BTCUSDT"] .price'))
            # A candle a second (1s bars): a few drawn, then more.
            drawn = "(n) => document.querySelectorAll('svg.candles rect').length >= n"
            await page.wait_for_function(drawn, arg=3, timeout=10_000)
            count = await page.locator("svg.candles rect").count()
            await page.wait_for_function(drawn, arg=count + 1, timeout=10_000)
            assert await page.evaluate("window.sockets") == 1  # strict mode, one socket
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "nextjs-page.png"), full_page=True)

            # /static answers CORS for FRONTEND_URL: the client imports cross-origin.
            imported = await page.evaluate(
                "async (url) => typeof (await import(url)).StockClient",
                gateway.base_url + "/static/stock-client.js",
            )
            assert imported == "function"
            headers = {"Origin": origin}
            for name in ("stock-client.js", "stock-hooks.js", "stock-hooks.d.ts"):
                async with gateway.session.get(
                    f"{gateway.base_url}/static/{name}", headers=headers
                ) as response:
                    assert response.status == 200
                    assert response.headers["access-control-allow-origin"] == origin
