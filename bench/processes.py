"""The benchmark's processes: the simulator + gateway stack, load clients, /proc readings."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.config import Config

PROJECT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pin(pid: int, cpus: set[int]) -> None:
    if os.cpu_count() and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, cpus)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (uvicorn --workers runs the app in children)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return total


@asynccontextmanager
async def process(
    *command: str, cpus: set[int], env: dict[str, str] | None = None, cwd: Path = PROJECT
) -> AsyncIterator[asyncio.subprocess.Process]:
    child = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        limit=64 * 1024 * 1024,  # a load report is one JSON line, megabytes when saturated
    )
    pin(child.pid, cpus)
    try:
        yield child
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                async with asyncio.timeout(10):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


@dataclass
class Stack:
    """One simulator and one gateway, running."""

    simulator_url: str
    gateway_url: str
    gateway_pid: int
    session: aiohttp.ClientSession
    load_cpus: set[int]

    async def health(self) -> dict[str, Any]:
        async with self.session.get(self.gateway_url + "/health") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def set_rate(self, rate: float) -> None:
        async with self.session.post(f"{self.simulator_url}/rate?value={rate}") as response:
            assert response.status == 200

    async def wait_upstream_carries(self, symbols: list[str]) -> None:
        async with asyncio.timeout(60):
            # An HTTP endpoint in another process: nothing to await but the next poll.
            while not set(symbols) <= set((await self.simulator_stats())["subscribed"]):  # noqa: ASYNC110
                await asyncio.sleep(0.1)

    async def simulator_stats(self) -> dict[str, Any]:
        async with self.session.get(self.simulator_url + "/stats") as response:
            result: dict[str, Any] = await response.json(loads=orjson.loads)
            return result


@asynccontextmanager
async def stack(
    config: Config,
    gateway_env: dict[str, str],
    *,
    workers: int = 1,
    gateway_cpus: set[int] | None = None,
    bare_reference: bool = False,
    simulator_args: tuple[str, ...] = (),
) -> AsyncIterator[Stack]:
    """The simulator and, on its own core, the gateway as deployed (or, with
    `bare_reference`, bench/reference_server.py: picows writing one frame per trade)."""
    cpus = os.cpu_count() or 1
    load_cpus = {cpus - 1}
    gateway_cpus = gateway_cpus or {0}
    simulator_port, gateway_port = free_port(), free_port()
    async with AsyncExitStack() as processes:
        await processes.enter_async_context(
            process(
                sys.executable, "-m", "stock_gateway.simulator",
                "--host", "127.0.0.1", "--port", str(simulator_port), "--rate", "0",
                "--tick", str(config.upstream_tick), "--sequenced", "--ping-interval", "30",
                "--max-symbols", "100000", *simulator_args,
                cpus=load_cpus,
            )
        )  # fmt: skip
        if bare_reference:
            reference = await processes.enter_async_context(
                process(
                    sys.executable, "-m", "bench.reference_server", "--port", str(gateway_port),
                    "--upstream", f"ws://127.0.0.1:{simulator_port}/",
                    cpus=gateway_cpus,
                )
            )  # fmt: skip
            session = await processes.enter_async_context(aiohttp.ClientSession())
            assert reference.stdout is not None
            async with asyncio.timeout(30):
                assert (await reference.stdout.readline()).strip() == b"ready"
            yield Stack(
                f"http://127.0.0.1:{simulator_port}",
                f"http://127.0.0.1:{gateway_port}",
                reference.pid,
                session,
                load_cpus,
            )
            return
        # Its own store, in a directory of its own: never the checkout's data/.
        store = processes.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-"))
        gateway = await processes.enter_async_context(
            process(
                sys.executable, "-m", "uvicorn", "gateway:app",
                "--host", "127.0.0.1", "--port", str(gateway_port),
                "--log-level", "warning", "--no-access-log", *config.gateway_flags,
                *(["--workers", str(workers)] if workers > 1 else []),
                cpus=gateway_cpus,
                cwd=config.gateway_dir or PROJECT,
                env={
                    "FINNHUB_WS_URL": f"ws://127.0.0.1:{simulator_port}/",
                    "FINNHUB_REST_URL": f"http://127.0.0.1:{simulator_port}/api/v1",
                    "FINNHUB_API_KEY": "bench",
                    "DEMO": "false",
                    "LOG_LEVEL": "WARNING",
                    # Fan-out is measured: no quotes (nor their `change` fields), as in the
                    # bare reference and in earlier revisions.
                    "REST_ENABLED": "false",
                    # The scenarios need more than the free-plan and per-host defaults: all
                    # load comes from one address.
                    "MAX_UPSTREAM_SYMBOLS": "100000",
                    "MAX_CLIENTS": "100000",
                    "MAX_SYMBOLS_PER_ADDRESS": "100000",
                    "NEW_SYMBOLS_PER_ADDRESS": "100000",
                    "MAX_CONNECTIONS_PER_ADDRESS": "100000",
                    "ADDRESS_HANDSHAKE_RATE": "100000",
                    "ADDRESS_HANDSHAKE_BURST": "100000",
                    "BAR_STORE_URL": f"sqlite:///{store}/bars.sqlite3",
                    **gateway_env,
                },
            )
        )  # fmt: skip
        session = await processes.enter_async_context(aiohttp.ClientSession())
        running = Stack(
            f"http://127.0.0.1:{simulator_port}",
            f"http://127.0.0.1:{gateway_port}",
            gateway.pid,
            session,
            load_cpus,
        )
        async with asyncio.timeout(30):
            while True:
                try:
                    health = await running.health()
                    if (
                        health["upstream"] == "connected"
                        and health.get("cluster_nodes", 1) >= workers
                    ):
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        yield running


@dataclass
class Load:
    child: asyncio.subprocess.Process
    clients: list[int]  # global client indexes
    per_client: int
    universe: list[str]

    async def finish(self) -> dict[str, Any]:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(b"stop\n")
        await self.child.stdin.drain()
        async with asyncio.timeout(60):
            line = await self.child.stdout.readline()
        report: dict[str, Any] = orjson.loads(line)
        return report


@asynccontextmanager
async def load(
    running: Stack,
    universe: list[str],
    *,
    clients: int,
    first_index: int = 0,
    per_client: int = 0,
    stuck: int = 0,
    query: str = "",
    sse: bool = False,
    bars: str = "",
    finnhub: bool = False,
) -> AsyncIterator[Load]:
    ws_url = running.gateway_url.replace("http://", "ws://") + ("/" if finnhub else "/ws")
    command = [
        sys.executable, "-m", "bench.load", "--url", ws_url, "--clients", str(clients),
        "--first-index", str(first_index), "--symbols", ",".join(universe),
        "--per-client", str(per_client), "--stuck", str(stuck), "--query", query,
        *(["--sse"] if sse else []), *(["--bars", bars] if bars else []),
        *(["--finnhub"] if finnhub else []),
    ]  # fmt: skip
    async with process(*command, cpus=running.load_cpus) as child:
        assert child.stdout is not None
        async with asyncio.timeout(180):
            line = await child.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"load process failed to start: {line!r}")
        yield Load(child, list(range(first_index, first_index + clients)), per_client, universe)
