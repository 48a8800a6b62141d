"""Reporting: the machine's description, the results table and the closing summary lines."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.abuse_runs import abuse_table
from bench.bar_store import bar_store_lines
from bench.finnhub import finnhub_lines


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


def summary(results: dict[str, Any]) -> None:
    """Write the table and a line per scenario's headline figures to stdout."""
    if "abuse" in results:
        sys.stdout.write(abuse_table(results["abuse"]) + "\n\n")
    rows = [
        *results.get("throughput", {}).get("steps", []),
        *results.get("reference", {}).get("steps", []),
        *results.get("asgi", {}).get("steps", []),
        *results.get("connections", []),
        *results.get("slow", []),
        *results.get("cluster", []),
        *[row for rows in results.get("delivery", {}).values() for row in rows],
        *results.get("finnhub", {}).get("dialects", []),
    ]
    if rows:
        sys.stdout.write(table(rows) + "\n")
    best = results.get("throughput", {}).get("best")
    if best:
        sys.stdout.write(
            "\nbest sustained (p99 <= 100 ms, nothing lost): "
            f"{best['deliveries_per_s']} deliveries/s at p99 {best['latency_ms']['p99']} ms\n"
        )
    reference_best = results.get("reference", {}).get("best")
    if best and reference_best:
        ratio = best["deliveries_per_s"] / reference_best["deliveries_per_s"]
        sys.stdout.write(
            f"reference best sustained: {reference_best['deliveries_per_s']} deliveries/s "
            f"(this tree / reference = {ratio:.2f}x)\n"
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
    for label, row in results.get("bars", {}).items():
        sys.stdout.write(
            f"{label}: gateway cpu {row['gateway_cpu_share']} at "
            f"{row['trades_sent']} trades sent, {row['bar_subscribers']} bar subscribers, "
            f"{row['bar_frames_received']} bar frames, RSS {row['gateway_rss_mib']} MiB\n"
        )
    for line in bar_store_lines(results.get("bar_store", {})):
        sys.stdout.write(line + "\n")
    for line in finnhub_lines(results.get("finnhub", {})):
        sys.stdout.write(line + "\n")
    if "soak" in results:
        soak_result = results["soak"]
        sys.stdout.write(
            f"soak: {soak_result['clients_served']} clients over {soak_result['seconds']:g} s, "
            f"{soak_result['upstream_reconnects']} upstream reconnects; RSS MiB idle "
            f"{soak_result['rss_mib_idle_start']}, after warm-up "
            f"{soak_result['rss_mib_after_warmup']}, end {soak_result['rss_mib_end']}; "
            f"{soak_result['clients_at_end']} clients and {len(soak_result['symbols_at_end'])} "
            f"symbols left; Finnhub released of every symbol within "
            f"{soak_result['upstream_released_within_s']} s "
            f"({len(soak_result['upstream_symbols_at_end'])} left)\n"
        )
