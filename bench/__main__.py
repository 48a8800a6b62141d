"""Run the fan-out benchmark: `python -m bench [--quick] [--out FILE]`.

Scenarios (each bounded in time, stopping by itself):
  throughput    1,000 clients on the same 20 symbols, upstream rate ramped step by step
  connections   10,000 clients, 5 symbols each out of 200, a modest rate
  slow          throughput's clients at half the best rate, then plus 10% that never read
  cluster       (only when asked) one process vs cluster mode with 1 and 2 processes
  soak          (only when asked) churning clients plus upstream drops for --soak-seconds,
                RSS sampled throughout: memory must come back to where it started

Processes: the simulator and the load clients are pinned to the last core, the
gateway (`uvicorn gateway:app`, as deployed) to the first, where there are two.
Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import platform
import random
import resource
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.load import HISTOGRAM_MS, symbols_for

PROJECT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Config:
    clients: int = 1000
    rates: tuple[float, ...] = (50, 100, 150, 200, 250, 300, 400, 500)
    warmup: float = 2.0
    measure: float = 5.0
    drain: float = 3.0
    connection_clients: int = 10_000
    connection_rate: float = 100.0
    slow_measure: float = 30.0
    soak_seconds: float = 600.0
    cluster_rates: tuple[float, ...] = (50, 100, 150)
    slow_consumer_timeout: float = 5.0
    # The never-reading clients must fill their buffers within the run: a small kernel
    # send buffer per client (a production setting too) instead of Linux's autotuned MBs.
    client_send_buffer: int = 16384
    gateway_flags: tuple[str, ...] = (
        "--ws",
        "server_protocol:GatewayWebSocketProtocol",
        "--ws-per-message-deflate",
        "false",
    )


QUICK = Config(
    clients=20,
    rates=(20, 40),
    warmup=0.5,
    measure=2.0,
    drain=1.0,
    connection_clients=200,
    connection_rate=20,
    slow_measure=3.0,
    soak_seconds=5.0,
    cluster_rates=(20,),
    slow_consumer_timeout=1.0,
)


# -- processes -----------------------------------------------------------------------------


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
    *command: str, cpus: set[int], env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    child = await asyncio.create_subprocess_exec(
        *command,
        cwd=PROJECT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
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
) -> AsyncIterator[Stack]:
    cpus = os.cpu_count() or 1
    load_cpus = {cpus - 1}
    gateway_cpus = gateway_cpus or {0}
    simulator_port, gateway_port = free_port(), free_port()
    async with AsyncExitStack() as processes:
        await processes.enter_async_context(
            process(
                sys.executable, "simulator.py",
                "--host", "127.0.0.1", "--port", str(simulator_port), "--rate", "0",
                "--tick", "0.005", "--sequenced", "--ping-interval", "30",
                "--max-symbols", "100000",
                cpus=load_cpus,
            )
        )  # fmt: skip
        gateway = await processes.enter_async_context(
            process(
                sys.executable, "-m", "uvicorn", "gateway:app",
                "--host", "127.0.0.1", "--port", str(gateway_port),
                "--log-level", "warning", "--no-access-log", *config.gateway_flags,
                *(["--workers", str(workers)] if workers > 1 else []),
                cpus=gateway_cpus,
                env={
                    "FINNHUB_WS_URL": f"ws://127.0.0.1:{simulator_port}/",
                    "FINNHUB_API_KEY": "bench",
                    "DEMO": "false",
                    "LOG_LEVEL": "WARNING",
                    # The scenarios need more than the free-plan and per-host defaults.
                    "MAX_UPSTREAM_SYMBOLS": "100000",
                    "MAX_CLIENTS": "100000",
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
) -> AsyncIterator[Load]:
    ws_url = running.gateway_url.replace("http://", "ws://") + "/ws"
    command = [
        sys.executable, "-m", "bench.load", "--url", ws_url, "--clients", str(clients),
        "--first-index", str(first_index), "--symbols", ",".join(universe),
        "--per-client", str(per_client), "--stuck", str(stuck),
    ]  # fmt: skip
    async with process(*command, cpus=running.load_cpus) as child:
        assert child.stdout is not None
        async with asyncio.timeout(180):
            line = await child.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"load process failed to start: {line!r}")
        yield Load(child, list(range(first_index, first_index + clients)), per_client, universe)


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    rate: float
    start: float
    end: float
    cpu_seconds: float
    rss_kib: int
    extra: dict[str, Any] = field(default_factory=dict)


async def measure(
    running: Stack, label: str, rate: float, seconds: float, load_pids: tuple[int, ...] = ()
) -> Window:
    """Measure whole seconds of the simulator's clock, starting at the next second."""
    await asyncio.sleep(math.ceil(time.time()) - time.time())
    load_before = sum(cpu_seconds(pid) for pid in load_pids)
    cpu_before, start = cpu_seconds(running.gateway_pid), time.time()
    await asyncio.sleep(math.ceil(seconds))
    cpu_after, end = cpu_seconds(running.gateway_pid), time.time()
    window = Window(label, rate, start, end, cpu_after - cpu_before, rss_kib(running.gateway_pid))
    if load_pids:
        load_cpu = sum(cpu_seconds(pid) for pid in load_pids) - load_before
        window.extra["load_cpu_share"] = round(load_cpu / (end - start), 3)
    return window


def percentile(histogram: list[int], fraction: float) -> int:
    total = sum(histogram)
    if not total:
        return 0
    target = math.ceil(total * fraction)
    running_total = 0
    for bucket, count in enumerate(histogram):
        running_total += count
        if running_total >= target:
            return bucket
    return HISTOGRAM_MS


def summarize(
    window: Window, loads: list[tuple[Load, dict[str, Any]]], simulator: dict[str, Any]
) -> dict[str, Any]:
    # Trades are bucketed by the second they were sent in; count the whole seconds inside.
    seconds = [str(s) for s in range(math.floor(window.start), math.floor(window.end))]
    span = len(seconds)
    histogram = [0] * (HISTOGRAM_MS + 1)
    received = 0
    worst = 0.0
    reordered = 0
    subscribers: dict[str, int] = {}
    for load_process, report in loads:
        reordered += report["reordered"]
        for client in load_process.clients:
            for symbol in symbols_for(client, load_process.universe, load_process.per_client):
                subscribers[symbol] = subscribers.get(symbol, 0) + 1
        for second in seconds:
            stats = report["seconds"].get(second)
            if stats is None:
                continue
            received += stats["count"]
            worst = max(worst, stats["max_ms"])
            for bucket, count in stats["histogram"].items():
                histogram[int(bucket)] += count
    sent = simulator["sent_per_second"]
    trades = sum(sum(sent.get(second, {}).values()) for second in seconds)
    expected = sum(
        count * subscribers.get(symbol, 0)
        for second in seconds
        for symbol, count in sent.get(second, {}).items()
    )
    timeline = []
    for second in seconds:
        merged = [0] * (HISTOGRAM_MS + 1)
        count, worst_in_second = 0, 0.0
        for _load, report in loads:
            stats = report["seconds"].get(second)
            if stats is not None:
                count += stats["count"]
                worst_in_second = max(worst_in_second, stats["max_ms"])
                for bucket, n in stats["histogram"].items():
                    merged[int(bucket)] += n
        timeline.append([count, percentile(merged, 0.99), round(worst_in_second, 1)])
    deliveries_per_second = received / span if span else 0.0
    clients = sum(len(load_process.clients) for load_process, _ in loads)
    wall = window.end - window.start
    return {
        "label": window.label,
        "rate_target": window.rate,
        "seconds": span,
        "upstream_trades_per_s": round(trades / span, 1) if span else 0.0,
        "deliveries_per_s": round(deliveries_per_second),
        "latency_ms": {
            "p50": percentile(histogram, 0.50),
            "p99": percentile(histogram, 0.99),
            "max": round(worst, 1),
        },
        "lost": max(expected - received, 0),
        "reordered": reordered,
        "gateway_cpu_share": round(window.cpu_seconds / wall, 3),
        "gateway_cpu_s_per_million": (
            round(window.cpu_seconds / (deliveries_per_second * wall / 1e6), 2)
            if deliveries_per_second
            else None
        ),
        "gateway_rss_mib": round(window.rss_kib / 1024, 1),
        "clients": clients,
        "per_second_deliveries_p99_max": timeline,
        **window.extra,
    }


async def collect(
    running: Stack, windows: list[Window], loads: list[Load], drain: float
) -> list[dict[str, Any]]:
    await running.set_rate(0)
    await asyncio.sleep(drain)  # let every in-flight update arrive before counting
    simulator = await running.simulator_stats()
    reports = [(load_process, await load_process.finish()) for load_process in loads]
    return [summarize(window, reports, simulator) for window in windows]


# -- scenarios ----------------------------------------------------------------------------


async def ramp(
    running: Stack,
    clients: Load,
    name: str,
    rates: tuple[float, ...],
    config: Config,
    *,
    saturation: float | None = None,
) -> list[Window]:
    """One measured window per upstream rate, after a warm-up at that rate; stops early
    once the gateway's CPU share passes `saturation`."""
    windows: list[Window] = []
    for rate in rates:
        await running.set_rate(rate)
        await asyncio.sleep(config.warmup)
        label = f"{name} @ {rate:g} trades/s"
        window = await measure(running, label, rate, config.measure, (clients.child.pid,))
        windows.append(window)
        if saturation is not None and window.cpu_seconds / (window.end - window.start) > saturation:
            break
    return windows


async def throughput(
    config: Config, name: str = "throughput", gateway_env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    universe = [f"T{index:02d}" for index in range(20)]
    async with (
        stack(config, gateway_env or {}) as running,
        load(running, universe, clients=config.clients) as clients,
    ):
        await running.wait_upstream_carries(universe)
        # Stop once the gateway's core is saturated: higher rates only queue up.
        windows = await ramp(running, clients, name, config.rates, config, saturation=0.97)
        return await collect(running, windows, [clients], config.drain)


def best_sustained(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [row for row in rows if row["latency_ms"]["p99"] <= 100 and row["lost"] == 0]
    return max(good, key=lambda row: row["deliveries_per_s"]) if good else None


async def connections(config: Config) -> list[dict[str, Any]]:
    universe = [f"C{index:03d}" for index in range(200)]
    async with stack(config, {}) as running:
        baseline = rss_kib(running.gateway_pid)
        halves = (config.connection_clients + 1) // 2
        async with (
            load(running, universe, clients=halves, per_client=5) as first,
            load(
                running,
                universe,
                clients=config.connection_clients - halves,
                first_index=halves,
                per_client=5,
            ) as second,
        ):
            health = await running.health()
            await running.wait_upstream_carries(universe)
            await running.set_rate(config.connection_rate)
            await asyncio.sleep(config.warmup)
            window = await measure(running, "connections", config.connection_rate, config.measure)
            connected = health["clients"]
            window.extra = {
                "connected_clients": connected,
                "gateway_rss_baseline_mib": round(baseline / 1024, 1),
                "rss_per_client_kib": round((window.rss_kib - baseline) / max(connected, 1), 1),
            }
            return await collect(running, [window], [first, second], config.drain)


async def slow_consumers(config: Config, rate: float) -> list[dict[str, Any]]:
    universe = [f"T{index:02d}" for index in range(20)]
    stuck_count = max(config.clients // 10, 1)
    gateway_env = {
        "SLOW_CONSUMER_TIMEOUT": str(config.slow_consumer_timeout),
        **(
            {"CLIENT_SEND_BUFFER": str(config.client_send_buffer)}
            if config.client_send_buffer
            else {}
        ),
    }
    async with (
        stack(config, gateway_env) as running,
        load(running, universe, clients=config.clients) as healthy,
    ):
        await running.wait_upstream_carries(universe)
        await running.set_rate(rate)
        await asyncio.sleep(config.warmup)
        reference = await measure(
            running, "slow: reference (no stuck clients)", rate, config.measure
        )
        async with load(running, universe, clients=0, stuck=stuck_count) as stuck:
            rss_samples = [rss_kib(running.gateway_pid)]
            await asyncio.sleep(math.ceil(time.time()) - time.time())
            start_cpu, start = cpu_seconds(running.gateway_pid), time.time()
            for _second in range(math.ceil(config.slow_measure)):
                await asyncio.sleep(1.0)
                rss_samples.append(rss_kib(running.gateway_pid))
            with_stuck = Window(
                f"slow: +{stuck_count} never-reading clients",
                rate,
                start,
                time.time(),
                cpu_seconds(running.gateway_pid) - start_cpu,
                rss_samples[-1],
            )
            health = await running.health()
            with_stuck.extra = {
                "stuck_clients": stuck_count,
                "rss_mib_per_second": [round(sample / 1024, 1) for sample in rss_samples],
                "rss_mib_start_peak_end": [
                    round(rss_samples[0] / 1024, 1),
                    round(max(rss_samples) / 1024, 1),
                    round(rss_samples[-1] / 1024, 1),
                ],
                "slow_consumer_disconnects": health["slow_consumer_disconnects"],
                "conflated_updates": health["conflated_updates"],
            }
            rows = await collect(running, [reference, with_stuck], [healthy], config.drain)
            await stuck.finish()
    reference_p99 = max(rows[0]["latency_ms"]["p99"], 1)
    rows[1]["p99_vs_reference"] = round(rows[1]["latency_ms"]["p99"] / reference_p99, 2)
    return rows


async def cluster(config: Config) -> list[dict[str, Any]]:
    """Single process vs cluster mode with 1 and 2 processes, same load, one run."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("the cluster scenario needs redis-server (apt-get install redis-server)")
    universe = [f"T{index:02d}" for index in range(20)]
    redis_port = free_port()
    cpus = os.cpu_count() or 1
    variants = [
        ("single process", {}, 1, {0}),
        ("cluster, 1 process", {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}, 1, {0}),
        (
            "cluster, 2 processes",
            {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"},
            2,
            set(range(cpus)),
        ),
    ]
    rows: list[dict[str, Any]] = []
    async with process(
        redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", cpus={cpus - 1},
    ):  # fmt: skip
        await asyncio.sleep(0.5)
        for name, env, workers, gateway_cpus in variants:
            async with (
                stack(config, env, workers=workers, gateway_cpus=gateway_cpus) as running,
                load(running, universe, clients=config.clients) as clients,
            ):
                await running.wait_upstream_carries(universe)
                windows = await ramp(running, clients, name, config.cluster_rates, config)
                rows.extend(await collect(running, windows, [clients], config.drain))
    return rows


async def churning_client(ws_url: str, session: aiohttp.ClientSession, rng: random.Random) -> str:
    """One short-lived client: subscribe, read a while, then leave one of three ways."""
    universe = [f"K{index:02d}" for index in range(100)]
    async with session.ws_connect(ws_url) as ws:
        symbols = rng.sample(universe, rng.randint(1, 5))
        await ws.send_bytes(orjson.dumps({"action": "subscribe", "symbols": symbols}))
        deadline = time.monotonic() + rng.uniform(0.1, 2.0)
        while (left := deadline - time.monotonic()) > 0:
            try:
                await ws.receive(timeout=left)
            except TimeoutError:
                break
        ending = rng.choice(("close", "close", "abort", "unsubscribe"))
        if ending == "abort":
            transport = ws._response.connection.transport if ws._response.connection else None
            if transport is not None:
                transport.abort()
        elif ending == "unsubscribe":
            await ws.send_bytes(orjson.dumps({"action": "unsubscribe", "symbols": symbols}))
        return ending


async def soak(config: Config) -> dict[str, Any]:
    """Churn plus upstream drops for a bounded time; RSS at start, throughout, at end."""
    rng = random.Random(1125)
    async with stack(config, {}) as running:
        ws_url = running.gateway_url.replace("http://", "ws://") + "/ws"
        await running.set_rate(50)
        connector = aiohttp.TCPConnector(limit=0)
        endings: dict[str, int] = {}
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                while time.monotonic() - started < config.soak_seconds:
                    try:
                        ending = await churning_client(ws_url, session, rng)
                    except (aiohttp.ClientError, OSError) as failure:
                        ending = f"failed: {type(failure).__name__}"
                    endings[ending] = endings.get(ending, 0) + 1

            async def drops_and_samples() -> None:
                next_drop = started + 30
                while (elapsed := time.monotonic() - started) < config.soak_seconds:
                    samples.append((round(elapsed), rss_kib(running.gateway_pid) / 1024))
                    if time.monotonic() >= next_drop:
                        async with session.post(running.simulator_url + "/drop"):
                            pass
                        next_drop += 30
                    await asyncio.sleep(min(5.0, config.soak_seconds / 10))

            baseline = rss_kib(running.gateway_pid) / 1024
            await asyncio.gather(drops_and_samples(), *(worker() for _ in range(50)))
        await running.set_rate(0)
        await asyncio.sleep(3)  # let the gateway notice every disconnect
        health = await running.health()
        end = rss_kib(running.gateway_pid) / 1024
    warm = samples[min(len(samples) - 1, 6)][1] if samples else baseline
    return {
        "seconds": config.soak_seconds,
        "clients_served": sum(endings.values()),
        "endings": endings,
        "upstream_reconnects": health["reconnects"],
        "clients_at_end": health["clients"],
        "symbols_at_end": health["symbols"],
        "rss_mib_idle_start": round(baseline, 1),
        "rss_mib_after_warmup": round(warm, 1),
        "rss_mib_end": round(end, 1),
        "rss_mib_samples": [[t, round(m, 1)] for t, m in samples],
    }


# -- reporting ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {
        name: metadata.version(name)
        for name in ("starlette", "uvicorn", "websockets", "aiohttp", "picows")
    }
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        **versions,
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<40} {'trades/s':>9} {'deliv/s':>9} {'p50':>5} {'p99':>5} {'max':>7} "
        f"{'lost':>6} {'cpu':>5} {'cpu s/M':>8} {'RSS MiB':>8} {'load cpu':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        latency = row["latency_ms"]
        lines.append(
            f"{row['label'][:40]:<40} "
            f"{row['upstream_trades_per_s']:>9} {row['deliveries_per_s']:>9} "
            f"{latency['p50']:>5} {latency['p99']:>5} {latency['max']:>7} {row['lost']:>6} "
            f"{row['gateway_cpu_share']:>5} {row['gateway_cpu_s_per_million'] or '-':>8} "
            f"{row['gateway_rss_mib']:>8} {row.get('load_cpu_share', '-'):>8}"
        )
    return "\n".join(lines)


async def run(config: Config, scenarios: list[str]) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 clients need the fds
    results: dict[str, Any] = {"machine": machine(), "gateway_flags": list(config.gateway_flags)}
    best_rate = config.rates[len(config.rates) // 2]
    if "throughput" in scenarios:
        rows = await throughput(config)
        best = best_sustained(rows)
        results["throughput"] = {"steps": rows, "best": best}
        if best is not None:
            best_rate = best["rate_target"]
    if "asgi" in scenarios:
        # The same load through plain ASGI sends (DIRECT_WRITES=false), for a
        # side-by-side ratio from one run on the same machine.
        rows = await throughput(config, "asgi sends", {"DIRECT_WRITES": "false"})
        results["asgi"] = {"steps": rows, "best": best_sustained(rows)}
    if "connections" in scenarios:
        results["connections"] = await connections(config)
    if "slow" in scenarios:
        results["slow"] = await slow_consumers(config, max(best_rate / 2, 1))
    if "soak" in scenarios:
        results["soak"] = await soak(config)
    if "cluster" in scenarios:
        results["cluster"] = await cluster(config)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["throughput", "asgi", "connections", "slow", "soak", "cluster"],
    )
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default 600)")
    parser.add_argument("--out", default="bench-results/latest.json")
    args = parser.parse_args()
    config = QUICK if args.quick else Config()
    if args.soak_seconds:
        config = dataclasses.replace(config, soak_seconds=args.soak_seconds)
    scenarios = args.scenario or ["throughput", "asgi", "connections", "slow"]
    results = asyncio.run(run(config, scenarios))
    rows = [
        *results.get("throughput", {}).get("steps", []),
        *results.get("asgi", {}).get("steps", []),
        *results.get("connections", []),
        *results.get("slow", []),
        *results.get("cluster", []),
    ]
    sys.stdout.write(table(rows) + "\n")
    best = results.get("throughput", {}).get("best")
    if best:
        sys.stdout.write(
            "\nbest sustained (p99 <= 100 ms, nothing lost): "
            f"{best['deliveries_per_s']} deliveries/s at p99 {best['latency_ms']['p99']} ms\n"
        )
    asgi_best = results.get("asgi", {}).get("best")
    if best and asgi_best:
        ratio = best["deliveries_per_s"] / asgi_best["deliveries_per_s"]
        sys.stdout.write(
            f"asgi sends best sustained: {asgi_best['deliveries_per_s']} deliveries/s "
            f"(fast path / asgi = {ratio:.2f}x)\n"
        )
    for row in results.get("connections", []):
        sys.stdout.write(
            f"connections: {row['connected_clients']} clients, "
            f"{row['rss_per_client_kib']} KiB RSS each\n"
        )
    if "slow" in results:
        slow = results["slow"][1]
        sys.stdout.write(
            f"slow consumers: healthy p99 {slow['p99_vs_reference']}x the reference; gateway RSS "
            f"start/peak/end {slow['rss_mib_start_peak_end']} MiB; "
            f"{slow['slow_consumer_disconnects']} closed as slow\n"
        )
    if "soak" in results:
        soak_result = results["soak"]
        sys.stdout.write(
            f"soak: {soak_result['clients_served']} clients over {soak_result['seconds']:g} s, "
            f"{soak_result['upstream_reconnects']} upstream reconnects; RSS MiB idle "
            f"{soak_result['rss_mib_idle_start']}, after warm-up "
            f"{soak_result['rss_mib_after_warmup']}, end {soak_result['rss_mib_end']}; "
            f"{soak_result['clients_at_end']} clients and {len(soak_result['symbols_at_end'])} "
            "symbols left\n"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    sys.stdout.write(f"\nwrote {out}\n")


if __name__ == "__main__":
    main()
