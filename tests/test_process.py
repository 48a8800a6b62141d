"""The gateway as a user starts it: `python gateway.py` and `uvicorn gateway:app`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson

PROJECT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any gateway configuration the developer may have set."""
    names = ("FINNHUB_API_KEY", "DEMO", "FINNHUB_WS_URL", "HOST", "PORT", "FRONTEND_URL")
    env = {key: value for key, value in os.environ.items() if key not in names}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def run_to_exit(*args: str, cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


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


@asynccontextmanager
async def demo_gateway(
    tmp_path: Path, port: int, *command: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start the gateway in demo mode; `python gateway.py --demo` unless a command is given."""
    command = command or (sys.executable, str(PROJECT / "gateway.py"), "--demo")
    process = await asyncio.create_subprocess_exec(
        *command,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=tmp_path,
        env=clean_env(DEMO="true", DEMO_TRADE_RATE="200"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await process.wait()


async def read_until(process: asyncio.subprocess.Process, needle: str) -> str:
    """The process's output up to the first line containing `needle`."""
    assert process.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(20):
        while True:
            line = (await process.stdout.readline()).decode()
            assert line, "the gateway exited early:\n" + "".join(seen)
            seen.append(line)
            if needle in line:
                return "".join(seen)


async def test_demo_mode_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    async with demo_gateway(tmp_path, port) as process:
        startup = await read_until(process, "Uvicorn running on")
        assert "SIMULATED" in startup
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
                            assert set(message["data"]) == {"price", "volume", "timestamp"}
                            assert 1 < message["data"]["price"] < 10_000
                            prices.append(message["data"]["price"])
                assert len(set(prices)) > 1, "a random walk moves"
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        async with asyncio.timeout(15):
            rest = (await process.stdout.read()).decode()
            # uvicorn re-raises the signal it handled once shutdown is done.
            assert await process.wait() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in rest
        for complaint in ("Task was destroyed", "Unclosed", "Traceback"):
            assert complaint not in rest, rest


async def test_uvicorn_command_line_serves_the_app(tmp_path: Path) -> None:
    port = free_port()
    uvicorn_command = (sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app")
    async with demo_gateway(tmp_path, port, *uvicorn_command) as process:
        await read_until(process, "Uvicorn running on")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            health = await response.json()
        assert health["status"] == "ok" and health["demo"] is True
