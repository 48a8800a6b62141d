"""The gateway as a user starts it: `python gateway.py` and `uvicorn gateway:app`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.stuck import open_never_reading_client
from stock_gateway.simulator.market import MarketSimulator, rest_url, serve
from tests.support.deploy_files import dockerfile_instruction
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    GatewayProcess,
    free_port,
    gateway_subprocess,
    run_to_exit,
)

pytestmark = pytest.mark.slow


async def test_missing_key_fails_at_once_with_the_seed_message(tmp_path: Path) -> None:
    code, output = await run_to_exit(sys.executable, str(PROJECT / "gateway.py"), cwd=tmp_path)
    assert code == 2
    assert "FINNHUB_API_KEY not found" in output
    assert "DEMO=true" in output


async def test_missing_key_fails_under_uvicorn_too(tmp_path: Path) -> None:
    code, output = await run_to_exit(
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(PROJECT),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "gateway:app",
        cwd=tmp_path,
    )
    assert code != 0
    assert "FINNHUB_API_KEY not found" in output


async def test_a_bad_setting_fails_naming_the_variable(tmp_path: Path) -> None:
    for command in (
        (sys.executable, str(PROJECT / "gateway.py"), "--demo"),
        (sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app",
         "--host", "127.0.0.1", "--port", str(free_port())),
    ):  # fmt: skip
        code, output = await run_to_exit(*command, cwd=tmp_path, LOG_LEVEL="verbose")
        assert code == 2, output
        assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in output
        assert "Traceback" not in output


async def test_outside_the_virtualenv_it_says_how_to_set_up(tmp_path: Path) -> None:
    # -S: no site-packages, as with a system python3 that has none of the dependencies.
    code, output = await run_to_exit(
        sys.executable, "-S", "-I", str(PROJECT / "gateway.py"), cwd=tmp_path
    )
    assert code == 1
    assert "is not installed" in output and "./dev run" in output
    assert "Traceback" not in output


def demo_gateway(
    tmp_path: Path, port: int, *command: str, **env: str
) -> AbstractAsyncContextManager[GatewayProcess]:
    """The gateway in demo mode; `python gateway.py --demo` unless a command is given."""
    command = command or (sys.executable, str(PROJECT / "gateway.py"), "--demo")
    return gateway_subprocess(
        tmp_path, port, command, {"DEMO": "true", "DEMO_TRADE_RATE": "200", **env}
    )


async def test_demo_mode_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    async with demo_gateway(tmp_path, port) as gateway:
        assert "SIMULATED" in gateway.output
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                health = await response.json()
            assert health["demo"] is True
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "connection"
                await ws.send_str(
                    orjson.dumps({"action": "subscribe", "symbols": ["AAPL"]}).decode()
                )
                prices: list[float] = []
                async with asyncio.timeout(10):
                    while len(prices) < 5:
                        message = await ws.receive_json()
                        if message["type"] == "price_update":
                            assert message["symbol"] == "AAPL"
                            # The seed's fields, plus the day's change once the quote
                            # has told the previous close.
                            assert {"price", "volume", "timestamp"} <= set(message["data"])
                            assert set(message["data"]) <= {
                                "price",
                                "volume",
                                "timestamp",
                                "change",
                                "change_percent",
                            }
                            assert 1 < message["data"]["price"] < 10_000
                            prices.append(message["data"]["price"])
                assert len(set(prices)) > 1, "a random walk moves"
        # uvicorn re-raises the signal it handled once shutdown is done.
        assert await gateway.terminate() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gateway.output
        for complaint in ("Task was destroyed", "Unclosed", "Traceback"):
            assert complaint not in gateway.output, gateway.output


async def test_demo_mode_simulates_prices_even_with_a_key_in_dotenv(tmp_path: Path) -> None:
    """`./dev run` passes --demo: a key left in .env must not switch it to the real feed
    while /health says demo (here the "real feed" is a scripted market that never trades)."""
    real = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(real) as real_url:
        (tmp_path / ".env").write_text(
            f"FINNHUB_API_KEY={TEST_KEY}\nFINNHUB_WS_URL={real_url}\n"
            f"FINNHUB_REST_URL={rest_url(real_url)}\n"
        )
        port = free_port()
        async with demo_gateway(tmp_path, port) as gateway, aiohttp.ClientSession() as session:
            assert (await health_of(session, port))["demo"] is True
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send_str(
                    orjson.dumps({"action": "subscribe", "symbols": ["AAPL"]}).decode()
                )
                async with asyncio.timeout(10):
                    while (await ws.receive_json())["type"] != "price_update":
                        pass
            assert not real.connections, "demo mode connected to the configured feed"
            assert "FINNHUB_API_KEY is set (environment or .env) but ignored" in gateway.output
            assert TEST_KEY not in gateway.output


async def test_uvicorn_command_line_serves_the_app(tmp_path: Path) -> None:
    port = free_port()
    uvicorn_command = (sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app")
    async with demo_gateway(tmp_path, port, *uvicorn_command) as gateway:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            health = await response.json()
        assert health["status"] == "ok" and health["demo"] is True
        assert "the live page is /demo" in gateway.output


DEPLOYED = (
    sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app",
    "--http", "stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol",
    "--ws-per-message-deflate", "false",
)  # fmt: skip
FIFTY_SYMBOLS = [f"S{index:02d}" for index in range(50)]


async def health_of(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/health") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_deployed_command_on_uvloop_uses_the_fast_path_and_evicts(tmp_path: Path) -> None:
    """uvicorn's own loop (uvloop with uvicorn[standard]) has transports of its own kind."""
    port = free_port()
    env = {"DEMO_TRADE_RATE": "5000", "SLOW_CONSUMER_TIMEOUT": "0.5", "CLIENT_OUTBOX_SIZE": "16"}
    async with demo_gateway(tmp_path, port, *DEPLOYED, **env):
        subscribe = orjson.dumps({"action": "subscribe", "symbols": FIFTY_SYMBOLS}).decode()
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}/ws") as reader,
        ):
            await reader.send_str(subscribe)
            stuck = await open_never_reading_client("127.0.0.1", port, subscribe)
            with stuck:
                health = await health_of(session, port)
                assert health["clients"] == 2 and health["clients_fast_path"] == 2
                received = 0
                async with asyncio.timeout(30):
                    while (await health_of(session, port))["clients"] != 1:
                        for _ in range(200):  # keep reading: this client is healthy
                            message = await reader.receive_json()
                            received += message["type"] == "price_update"
                assert received > 0 and not reader.closed
                # Evicted by the hub (outbox stuck) or below it (no byte read for
                # SLOW_CONSUMER_TIMEOUT, server/progress.py), whichever saw it first.
                evicted = (await health_of(session, port))["slow_consumer_disconnects"]
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    metrics = await response.text()
                aborted = 'gateway_refusals_total{reason="write_timeout"}' in metrics
                assert evicted == 1 or aborted, metrics


async def test_sigterm_with_a_stalled_client_still_shuts_down(tmp_path: Path) -> None:
    port = free_port()
    env = {"DEMO_TRADE_RATE": "5000", "SLOW_CONSUMER_TIMEOUT": "600", "CLIENT_OUTBOX_SIZE": "16"}
    async with demo_gateway(tmp_path, port, *DEPLOYED, **env) as gateway:
        subscribe = orjson.dumps({"action": "subscribe", "symbols": FIFTY_SYMBOLS}).decode()
        async with aiohttp.ClientSession() as session:
            stuck = await open_never_reading_client("127.0.0.1", port, subscribe)
            with stuck:
                async with asyncio.timeout(30):  # until its outbox overflows: it is stalled
                    while (await health_of(session, port))["conflated_updates"] == 0:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                assert await gateway.terminate() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gateway.output


async def test_container_start_command_serves_health(tmp_path: Path) -> None:
    """No Docker engine here: run the image's CMD (the installed `stock-gateway`
    command) as-is, on loopback and a free port."""
    command = json.loads(dockerfile_instruction("CMD"))
    assert command == ["stock-gateway"]
    assert dockerfile_instruction("USER") != "root"
    assert "/health" in dockerfile_instruction("HEALTHCHECK")
    port = free_port()
    runnable = (str(Path(sys.executable).parent / command[0]),)
    async with (
        demo_gateway(tmp_path, port, *runnable) as gateway,
        aiohttp.ClientSession() as session,
    ):
        health = await health_of(session, port)
        assert health["status"] == "ok" and health["demo"] is True
        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "connection"
            assert (await health_of(session, port))["clients_fast_path"] == 1
    assert "Traceback" not in gateway.output
