"""Bad settings against the real process, started each of the three ways a user starts
it: one line naming the setting, exit status 2, no traceback, before anything connects;
and a typo in .env is named with the setting meant while the gateway still serves."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.helpers import PROJECT, free_port, gateway_subprocess, run_to_exit

pytestmark = pytest.mark.slow

PYTHON_GATEWAY = (sys.executable, str(PROJECT / "gateway.py"), "--demo")
CONSOLE_SCRIPT = (str(Path(sys.executable).parent / "stock-gateway"), "--demo")


def uvicorn_gateway() -> tuple[str, ...]:
    return (sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app",
            "--host", "127.0.0.1", "--port", str(free_port()))  # fmt: skip


# The values a new user tried; each once failed late (a feed retrying forever, 403 for
# every browser) or with a traceback from deep inside the wiring.
BAD_VALUES = {
    "FINNHUB_WS_URL": "not-a-url",
    "FRONTEND_URL": "localhost:3000",
    "BAR_STORE_URL": "foo://gw:hunter2@bar",
    "REDIS_URL": "notaurl:hunter2",
}


async def fails_naming(tmp_path: Path, command: tuple[str, ...], name: str, value: str) -> None:
    # A store that would be opened (a file written) if the check came late; a cluster
    # (REDIS_URL) refuses sqlite:// for its own reason, so it gets the memory store.
    store = "memory://" if name == "REDIS_URL" else f"sqlite:///{tmp_path}/bars.sqlite3"
    env = {"BAR_STORE_URL": store, name: value}
    code, output = await run_to_exit(*command, cwd=tmp_path, **env)
    lines = output.strip().splitlines()
    assert code == 2, output
    assert len(lines) == 1 and f" {name} must be " in lines[0], output
    assert "Traceback" not in output and "hunter2" not in output
    assert not (tmp_path / "bars.sqlite3").exists()


async def test_python_gateway_py_names_each_bad_url(tmp_path: Path) -> None:
    async with asyncio.TaskGroup() as group:  # the first failure cancels (ends) the rest
        for name, value in BAD_VALUES.items():
            group.create_task(fails_naming(tmp_path, PYTHON_GATEWAY, name, value))


@pytest.mark.parametrize("name", ["BAR_STORE_URL", "REDIS_URL"])
async def test_uvicorn_and_the_console_script_name_it_too(tmp_path: Path, name: str) -> None:
    async with asyncio.TaskGroup() as group:
        group.create_task(fails_naming(tmp_path, uvicorn_gateway(), name, BAD_VALUES[name]))
        group.create_task(fails_naming(tmp_path, CONSOLE_SCRIPT, name, BAD_VALUES[name]))


async def test_a_typo_in_dotenv_is_named_and_the_gateway_still_serves(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FRONTEND_ULR=http://app.example\nMAX_CLIENT=5\n")
    port = free_port()
    env = {"DEMO": "true", "BAR_STORE_URL": "memory://"}
    async with gateway_subprocess(tmp_path, port, PYTHON_GATEWAY, env) as gateway:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            assert response.status == 200 and (await response.json())["demo"] is True
        warnings = [line for line in gateway.lines if "in .env is not a setting" in line]
        assert len(warnings) == 2, gateway.output
        assert "level=WARNING" in warnings[0] and "level=WARNING" in warnings[1]
        assert "FRONTEND_ULR in .env is not a setting; did you mean FRONTEND_URL?" in warnings[0]
        assert "MAX_CLIENT in .env is not a setting; did you mean MAX_CLIENTS?" in warnings[1]
