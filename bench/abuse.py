"""The abuse rig: the gateway as deployed (a uvicorn process with the documented flags),
a scripted Finnhub in this process, a steady stream for a bystander client on another
address, and the measures that judge an attack: the bystander's update rate with and
without it, its median latency (trade stamped to update read) and longest wait between
two updates during it, `/health` latency throughout, and the gateway's RSS.

Used by tests/abuse/test_abuse_*.py (short attacks, asserted) and by `python -m bench
--scenario abuse` (longer attacks, reported in BENCHMARKS.md). Loopback only; every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from bench.config import Config
from bench.processes import PROJECT, free_port
from stock_gateway.settings import environment_names
from stock_gateway.simulator.market import MarketSimulator, rest_url, serve

BYSTANDER = "127.0.0.2"  # the normal client's address; attackers use 127.0.0.3 and up
KEY = "abuse-test-key"
PUMP_SYMBOL = "AAPL"
T = TypeVar("T")


@dataclass
class Measure:
    """One attack's effect, measured in the same run as a window without it."""

    baseline_rate: float  # bystander updates per second before the attack
    attack_rate: float  # ... and during it
    health_max_ms: float
    health_failures: int
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    latency_median_ms: float = 0.0  # the bystander's, during the attack
    gap_max_ms: float = 0.0  # the bystander's longest wait between two updates, during it

    @property
    def ratio(self) -> float:
        return self.attack_rate / self.baseline_rate if self.baseline_rate else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "bystander_rate_before": round(self.baseline_rate, 1),
            "bystander_rate_during": round(self.attack_rate, 1),
            "bystander_ratio": round(self.ratio, 3),
            "health_max_ms": round(self.health_max_ms, 1),
            "health_failures": self.health_failures,
            "bystander_latency_median_ms": round(self.latency_median_ms, 1),
            "bystander_gap_max_ms": round(self.gap_max_ms, 1),
            "rss_mib_before_peak_after": [  # type: ignore[dict-item]
                round(self.rss_before_mib, 1),
                round(self.rss_peak_mib, 1),
                round(self.rss_after_mib, 1),
            ],
        }


class AbuseRig:
    def __init__(
        self,
        simulator: MarketSimulator,
        process: asyncio.subprocess.Process,
        port: int,
        log: Path,
        session: aiohttp.ClientSession,
    ) -> None:
        self.simulator = simulator
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.session = session
        self._log = log
        self.bystander_updates = 0
        self.bystander_closed = False
        # (arrival on the monotonic clock, latency in ms) of each bystander update
        self.bystander_arrivals: list[tuple[float, float]] = []

    def log_text(self) -> str:
        return self._log.read_text(errors="replace")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def health(self) -> tuple[int, dict[str, Any], float]:
        """(status, body, milliseconds) of one GET /health."""
        started = time.perf_counter()
        async with self.session.get(self.base_url + "/health") as response:
            body: dict[str, Any] = await response.json()
            return response.status, body, (time.perf_counter() - started) * 1000

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(self.base_url + "/metrics") as response:
            text = await response.text()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    async def bystander_rate(
        self, seconds: float, *, until: asyncio.Task[Any] | None = None, at_least: float = 0.0
    ) -> float:
        """The bystander's updates a second over `seconds`, or until `until` is done if
        that comes first (but not before `at_least` seconds)."""
        before, started = self.bystander_updates, time.monotonic()
        if until is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(at_least)
            await asyncio.wait([until], timeout=max(0.0, seconds - at_least))
        return (self.bystander_updates - before) / (time.monotonic() - started)

    async def settled(self, pause: float, within: float = 15.0) -> None:
        """`pause` seconds for timeouts and evictions to settle, then until the
        bystander's updates arrive fresh again (an attack's backlog drained), at most
        `within` seconds more: the next attack's baseline starts clean."""
        await asyncio.sleep(pause)
        deadline, seen = time.monotonic() + within, len(self.bystander_arrivals)
        while time.monotonic() < deadline:  # the bystander's reader has no event to await
            fresh = self.bystander_arrivals[seen:]
            if fresh and fresh[-1][1] < 100:
                return
            await asyncio.sleep(0.05)

    async def measure(
        self,
        attack: Callable[[], Coroutine[Any, Any, T]],
        seconds: float,
        baseline: float = 1.0,
        *,
        ends_with_attack: float | None = None,
    ) -> tuple[Measure, T | None]:
        """The bystander's rate for `baseline` seconds, then for `seconds` while `attack`
        runs (cancelled if it is still running then), with /health probed and RSS sampled
        throughout; with `ends_with_attack`, the window ends when the attack does, but
        lasts at least that many seconds. Returns the measure and the attack's result
        (None if cancelled)."""
        rss_before = self.rss_mib()
        baseline_rate = await self.bystander_rate(baseline)
        latencies: list[float] = []
        failures = 0
        rss_peak = rss_before

        async def probe() -> None:
            nonlocal failures, rss_peak
            while True:
                try:
                    async with asyncio.timeout(5):
                        status, _, took = await self.health()
                    latencies.append(took)
                    failures += status != 200
                except (TimeoutError, aiohttp.ClientError):
                    failures += 1
                    latencies.append(5000.0)
                rss_peak = max(rss_peak, self.rss_mib())
                await asyncio.sleep(0.1)

        running = asyncio.create_task(attack())
        prober = asyncio.create_task(probe())
        arrivals_before, started = len(self.bystander_arrivals), time.monotonic()
        try:
            if ends_with_attack is None:
                attack_rate = await self.bystander_rate(seconds)
            else:
                attack_rate = await self.bystander_rate(
                    seconds, until=running, at_least=ends_with_attack
                )
        finally:
            prober.cancel()
            if not running.done():
                running.cancel()
            await asyncio.wait([prober, running])
        result = None if running.cancelled() else running.result()
        during = self.bystander_arrivals[arrivals_before:]
        times = [started, *(arrived for arrived, _ in during), time.monotonic()]
        measure = Measure(
            baseline_rate,
            attack_rate,
            max(latencies, default=0.0),
            failures,
            rss_before,
            rss_peak,
            self.rss_mib(),
            statistics.median(latency for _, latency in during) if during else 0.0,
            max(later - earlier for earlier, later in pairwise(times)) * 1000,
        )
        return measure, result


@asynccontextmanager
async def abuse_rig(
    env: dict[str, str] | None = None, *, pump_per_second: float = 100.0
) -> AsyncIterator[AbuseRig]:
    """The gateway under `env` (settings) on a free port, its bystander subscribed to
    AAPL from 127.0.0.2 and receiving `pump_per_second` updates a second."""
    simulator = MarketSimulator(rate=0, token=KEY)
    port = free_port()
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(serve(simulator))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="abuse-")))
        log = folder / "gateway.log"
        process = await stack.enter_async_context(_gateway(port, upstream, log, env or {}))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        rig = AbuseRig(simulator, process, port, log, session)
        await _until_healthy(rig, process)
        bystander = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(BYSTANDER, 0)))
        )
        ws = await bystander.ws_connect(rig.ws_url)
        await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": [PUMP_SYMBOL]}).decode())
        await simulator.wait_for(lambda: PUMP_SYMBOL in simulator.subscribed_symbols(), 10)
        reader = asyncio.create_task(_count_updates(rig, ws))
        pump = asyncio.create_task(_pump(simulator, pump_per_second))
        try:
            await rig.bystander_rate(0.5)  # let the stream settle
            yield rig
        finally:
            for task in (pump, reader):
                task.cancel()
            await asyncio.wait([pump, reader])
            await ws.close()


@asynccontextmanager
async def _gateway(
    port: int, upstream: str, log: Path, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT), "gateway:app",
        "--host", "127.0.0.1", "--port", str(port), *Config().gateway_flags,
    ]  # fmt: skip
    settings = {
        "FINNHUB_WS_URL": upstream,
        "FINNHUB_REST_URL": rest_url(upstream),  # loopback only, never finnhub.io
        "FINNHUB_API_KEY": KEY,
        "DEMO": "false",
        "LOG_LEVEL": "INFO",
        **env,
    }
    names = set(environment_names())  # none of the developer's own gateway settings
    base = {key: value for key, value in os.environ.items() if key not in names}
    # Its own store and working directory: never the checkout's data/.
    store = tempfile.TemporaryDirectory(prefix="bench-abuse-")
    settings.setdefault("BAR_STORE_URL", f"sqlite:///{store.name}/bars.sqlite3")
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=store.name, env={**base, **settings}, stdout=output, stderr=output
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        store.cleanup()


async def _until_healthy(rig: AbuseRig, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(20):
        while True:
            if process.returncode is not None:
                raise RuntimeError("the gateway exited:\n" + rig.log_text()[-3000:])
            try:
                status, body, _ = await rig.health()
                if status == 200 and body["upstream"] == "connected":
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def _count_updates(rig: AbuseRig, ws: aiohttp.ClientWebSocketResponse) -> None:
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT and '"price_update"' in message.data:
            rig.bystander_updates += 1
            # The pump stamps each trade with the wall clock it sent it at (ms).
            sent_ms = orjson.loads(message.data)["data"]["timestamp"]
            rig.bystander_arrivals.append((time.monotonic(), time.time() * 1000 - sent_ms))
    rig.bystander_closed = True


async def _pump(simulator: MarketSimulator, per_second: float) -> None:
    """A steady stream for the bystander's symbol, paced by the clock."""
    interval, price, next_at = 1 / per_second, 100.0, time.monotonic()
    while True:
        price = round(price + 0.01, 2)
        now_ms = int(time.time() * 1000)
        await simulator.send_trades([{"s": PUMP_SYMBOL, "p": price, "t": now_ms, "v": 1}])
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
