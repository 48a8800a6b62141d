"""The benchmark's scenarios, each bounded in time, and `run()`, which runs those asked for."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.abuse_runs import abuse
from bench.bar_store import bar_store
from bench.config import Config
from bench.finnhub import finnhub
from bench.measure import Window, best_sustained, collect, measure, ramp
from bench.processes import cpu_seconds, free_port, load, process, rss_kib, stack
from bench.report import machine
from bench.symbols import symbols_scenario


async def throughput(
    config: Config,
    name: str = "throughput",
    gateway_env: dict[str, str] | None = None,
    *,
    rates: tuple[float, ...] | None = None,
    query: str = "",
    sse: bool = False,
    bare_reference: bool = False,
) -> list[dict[str, Any]]:
    """1,000 clients on the same 20 symbols, the upstream rate ramped step by step, until
    the gateway's core saturates. `query` sets delivery options (`batch_ms=50`), `sse`
    makes the clients use /stream, `bare_reference` replaces the gateway with
    bench/reference_server.py."""
    universe = [f"T{index:02d}" for index in range(20)]
    async with (
        stack(config, gateway_env or {}, bare_reference=bare_reference) as running,
        load(running, universe, clients=config.clients, query=query, sse=sse) as clients,
    ):
        await running.wait_upstream_carries(universe)
        # Stop once the gateway's core is saturated: higher rates only queue up.
        steps = rates or config.rates
        windows = await ramp(running, clients, name, steps, config, saturation=0.97)
        return await collect(running, windows, [clients], config.drain)


async def delivery(config: Config) -> dict[str, Any]:
    """Issue 12's comparisons, one run: the default protocol, the bare picows server
    writing one frame per trade, batched (50 ms) and throttled (250 ms) streams, and
    SSE beside WebSockets at the same modest rates."""
    results: dict[str, Any] = {}
    results["default"] = await throughput(config, "default protocol")
    results["bare picows"] = await throughput(config, "bare picows", bare_reference=True)
    results["batched"] = await throughput(
        config, "batched 50 ms", rates=config.batched_rates, query="batch_ms=50"
    )
    results["throttled"] = await throughput(
        config, "throttled 250 ms", rates=config.throttled_rates, query="throttle_ms=250"
    )
    results["sse"] = await throughput(config, "sse", rates=config.sse_rates, sse=True)
    results["websocket beside sse"] = await throughput(
        config, "websocket beside sse", rates=config.sse_rates
    )
    return results


async def bars(config: Config, reference: Path | None) -> dict[str, Any]:
    """Issue 14's row: the gateway's CPU at `bars_rate` trades/s over 50 symbols with
    1,000 clients following the bars of 5 symbols each (1m), beside the same load on a
    revision without bars (`--reference`), in one run. One more client follows every
    symbol's prices (batched) in both, so the upstream carries the same symbols."""
    universe = [f"B{index:02d}" for index in range(50)]
    runs = [("bars", config)]
    if reference is not None:
        without = dataclasses.replace(config, gateway_dir=reference)
        runs.append((f"without bars ({reference.name})", without))
    results: dict[str, Any] = {}
    for label, run_config in runs:
        async with (
            stack(run_config, {}) as running,
            load(running, universe, clients=1, query="batch_ms=100") as anchor,
            load(
                running, universe, clients=config.clients, first_index=1, per_client=5,
                bars="1m",
            ) as charts,
        ):  # fmt: skip
            await running.wait_upstream_carries(universe)
            trades_before = (await running.simulator_stats())["trades_sent"]
            await running.set_rate(config.bars_rate)
            await asyncio.sleep(config.warmup)
            pids = (anchor.child.pid, charts.child.pid)
            window = await measure(running, label, config.bars_rate, config.measure, pids)
            await running.set_rate(0)
            seconds = window.end - window.start
            charts_report = await charts.finish()
            await anchor.finish()
            stats = await running.simulator_stats()
            bar_frames = sum(second["count"] for second in charts_report["seconds"].values())
            results[label] = {
                "trades_per_s_target": config.bars_rate,
                "trades_sent": stats["trades_sent"] - trades_before,
                "gateway_cpu_share": round(window.cpu_seconds / seconds, 3),
                "gateway_rss_mib": round(window.rss_kib / 1024, 1),
                "load_cpu_share": window.extra.get("load_cpu_share"),
                "bar_frames_received": bar_frames,
                "bar_subscribers": charts_report["clients"],
            }
    return results


async def connections(config: Config) -> list[dict[str, Any]]:
    universe = [f"C{index:03d}" for index in range(config.connection_symbols)]
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
        # As long as the window with stuck clients: a longer window catches more of a
        # shared machine's stray spikes, so unequal windows would skew the ratio.
        reference = await measure(
            running, "slow: reference (no stuck clients)", rate, config.slow_measure
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
        await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": symbols}).decode())
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
            await ws.send_str(orjson.dumps({"action": "unsubscribe", "symbols": symbols}).decode())
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
        # Symbols linger upstream after their last client (SYMBOL_LINGER_SECONDS): wait
        # for Finnhub to be released of all of them too.
        released_after = time.monotonic()
        async with asyncio.timeout(90):
            while (await running.simulator_stats())["subscribed"]:  # noqa: ASYNC110
                await asyncio.sleep(1)  # another process's state: nothing to await
        released_after = time.monotonic() - released_after
        upstream_at_end = (await running.simulator_stats())["subscribed"]
        end = rss_kib(running.gateway_pid) / 1024
    warm = samples[min(len(samples) - 1, 6)][1] if samples else baseline
    return {
        "seconds": config.soak_seconds,
        "clients_served": sum(endings.values()),
        "endings": endings,
        "upstream_reconnects": health["reconnects"],
        "clients_at_end": health["clients"],
        "symbols_at_end": health["symbols"],
        "upstream_symbols_at_end": upstream_at_end,
        "upstream_released_within_s": round(released_after + 3, 1),
        "rss_mib_idle_start": round(baseline, 1),
        "rss_mib_after_warmup": round(warm, 1),
        "rss_mib_end": round(end, 1),
        "rss_mib_samples": [[t, round(m, 1)] for t, m in samples],
    }


async def run(
    config: Config,
    scenarios: list[str],
    reference: Path | None = None,
    reference_flags: tuple[str, ...] = (),
) -> dict[str, Any]:
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
    compare = "throughput" in scenarios or "delivery" in scenarios
    if config.gateway_dir is None and reference is not None and compare:
        # The same throughput load on another revision's gateway, same run, same machine.
        reference_config = dataclasses.replace(
            config, gateway_dir=reference, gateway_flags=reference_flags or config.gateway_flags
        )
        rows = await throughput(reference_config, f"reference {reference.name}")
        results["reference"] = {"dir": str(reference), "steps": rows, "best": best_sustained(rows)}
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
    if "abuse" in scenarios:
        results["abuse"] = await abuse(config)
    if "delivery" in scenarios:
        results["delivery"] = await delivery(config)
    if "bars" in scenarios:
        results["bars"] = await bars(config, reference)
    if "finnhub" in scenarios:
        results["finnhub"] = await finnhub(config)
    if "bar-store" in scenarios:
        results["bar_store"] = await bar_store(config)
    if "symbols" in scenarios:
        results["symbols"] = await symbols_scenario(config)
    return results
