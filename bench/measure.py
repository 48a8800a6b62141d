"""Measuring windows and turning the load clients' reports into result rows."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from bench.config import Config
from bench.load import HISTOGRAM_MS, symbols_for
from bench.processes import Load, Stack, cpu_seconds, rss_kib


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


def best_sustained(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [row for row in rows if row["latency_ms"]["p99"] <= 100 and row["lost"] == 0]
    return max(good, key=lambda row: row["deliveries_per_s"]) if good else None
