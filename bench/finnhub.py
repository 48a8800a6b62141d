"""Issue 19's scenario, `python -m bench --scenario finnhub`: apps written against
Finnhub, pointed at the gateway.

- **dashboards**: `dashboard_loads` dashboard loads, each the four REST calls of the
  seed frontend's stock page (quote, profile, metrics, company news) for one of 20
  symbols, `dashboard_concurrency` at a time, through the REST mirror (`/api/v1`) to the
  simulator's REST side enforcing the same plan: the calls that reached Finnhub, cache
  hits and coalesced requests, 429s, and p50/p99 of the answers; once per plan in
  `dashboard_plans` (a paid plan's rate, and the free plan's 60 a minute).
- **dialects**: the same trade stream to 1,000 clients speaking the gateway's protocol
  at `/ws`, then Finnhub's at `/`, each at `finnhub_rates`: deliveries (trades in
  the clients' hands) per second and per CPU-second of the gateway.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from bench.config import Config
from bench.measure import collect, ramp
from bench.processes import load, stack

UNIVERSE = [f"T{index:02d}" for index in range(20)]
QUIET = {  # one address drives every dashboard: its shares are not what is measured
    "HTTP_REQUESTS_PER_ADDRESS": "1000000",
    "HTTP_REQUEST_BURST": "1000000",
    "FINNHUB_REST_REQUESTS_PER_ADDRESS": "1000000",
    "QUOTE_REQUESTS_PER_ADDRESS": "1000000",
}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 1)


def dashboard_paths(symbol: str) -> list[str]:
    """The seed frontend's stock page: its four calls to Finnhub."""
    today = datetime.now(UTC).date()
    week_ago = today - timedelta(days=7)
    return [
        f"/api/v1/quote?symbol={symbol}",
        f"/api/v1/stock/profile2?symbol={symbol}",
        f"/api/v1/stock/metric?symbol={symbol}&metric=all",
        f"/api/v1/company-news?symbol={symbol}&from={week_ago}&to={today}",
    ]


async def dashboards(config: Config, plan: int) -> dict[str, Any]:
    env = {"REST_ENABLED": "true", "FINNHUB_REST_RATE": str(plan), **QUIET}
    rng = random.Random(19)
    # A trading simulator (however slowly) quotes every symbol, as Finnhub does real ones.
    simulator_args = ("--rest-rate", str(plan), "--rate", "1")
    async with stack(config, env, simulator_args=simulator_args) as running:
        answers: list[float] = []
        pages: list[float] = []
        statuses: dict[str, int] = {}
        gate = asyncio.Semaphore(config.dashboard_concurrency)
        connector = aiohttp.TCPConnector(limit=0)

        async def get(session: aiohttp.ClientSession, path: str) -> None:
            started = time.perf_counter()
            async with session.get(running.gateway_url + path) as response:
                await response.read()
                statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
            answers.append((time.perf_counter() - started) * 1000)

        async def dashboard(session: aiohttp.ClientSession, symbol: str) -> None:
            async with gate:
                started = time.perf_counter()
                await asyncio.gather(*(get(session, path) for path in dashboard_paths(symbol)))
                pages.append((time.perf_counter() - started) * 1000)

        symbols = [rng.choice(UNIVERSE) for _ in range(config.dashboard_loads)]
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(dashboard(session, symbol) for symbol in symbols))
        seconds = time.perf_counter() - started
        health = await running.health()
        simulator = await running.simulator_stats()
    upstream = {
        path: counts
        for path, counts in simulator["rest_calls"].items()
        if path != "/stock/market-status"
    }
    mirror = health["finnhub_rest"]
    return {
        "plan_per_minute": plan,
        "dashboard_loads": config.dashboard_loads,
        "requests": len(answers),
        "seconds": round(seconds, 2),
        "statuses": statuses,
        "upstream_calls": sum(sum(counts.values()) for counts in upstream.values()),
        "upstream_calls_by_path": upstream,
        "upstream_429s": sum(counts.get("429", 0) for counts in simulator["rest_calls"].values()),
        "upstream_max_in_a_minute": simulator["rest_calls_max_in_a_minute"],
        "forwarded": mirror["forwarded"],
        "cache_hits": mirror["cache_hits"],
        "coalesced": mirror["coalesced"],
        "refusals": mirror["refusals"],
        "answer_ms": {
            "p50": _percentile(answers, 0.5),
            "p99": _percentile(answers, 0.99),
            "max": round(max(answers, default=0.0), 1),
        },
        "dashboard_ms": {"p50": _percentile(pages, 0.5), "p99": _percentile(pages, 0.99)},
    }


async def dialects(config: Config) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, finnhub in (("/ws (gateway protocol)", False), ("/ (Finnhub protocol)", True)):
        async with (
            stack(config, {}) as running,
            load(running, UNIVERSE, clients=config.clients, finnhub=finnhub) as clients,
        ):
            await running.wait_upstream_carries(UNIVERSE)
            windows = await ramp(running, clients, label, config.finnhub_rates, config)
            rows.extend(await collect(running, windows, [clients], config.drain))
    for row in rows:
        cpu = row["gateway_cpu_share"]
        row["deliveries_per_cpu_second"] = round(row["deliveries_per_s"] / cpu) if cpu else None
    return rows


async def finnhub(config: Config) -> dict[str, Any]:
    return {
        "dashboards": [await dashboards(config, plan) for plan in config.dashboard_plans],
        "dialects": await dialects(config),
    }


def finnhub_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for run in results.get("dashboards", []):
        lines.append(
            f"dashboards (plan {run['plan_per_minute']}/min): {run['dashboard_loads']} loads, "
            f"{run['requests']} answers in {run['seconds']} s {run['statuses']}; "
            f"{run['upstream_calls']} upstream calls (max {run['upstream_max_in_a_minute']} in "
            f"a minute, {run['upstream_429s']} 429s), {run['cache_hits']} cache hits, "
            f"{run['coalesced']} coalesced; answers p50 {run['answer_ms']['p50']} ms, "
            f"p99 {run['answer_ms']['p99']} ms"
        )
    for row in results.get("dialects", []):
        lines.append(
            f"{row['label']}: {row['deliveries_per_s']} deliveries/s, gateway cpu "
            f"{row['gateway_cpu_share']}: {row['deliveries_per_cpu_second']} per CPU-second"
        )
    return lines
