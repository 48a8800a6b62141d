"""The benchmark command keeps working: a quick run end to end (figures not judged)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.abuse_runs import ATTACKS, BAR_ATTACKS
from bench.config import QUICK
from bench.spend_attacks import OWN_RIG_ATTACKS
from tests.support.postgres_server import postgres_bin

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]


async def quick_run(tmp_path: Path, scenario: str | None) -> tuple[dict[str, Any], bytes]:
    """`python -m bench --quick` (every default scenario, or one): its results and output."""
    out = tmp_path / "bench.json"
    chosen = ["--scenario", scenario] if scenario else []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", "--quick", *chosen, "--out", str(out),
        cwd=PROJECT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(180):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-3000:]
    results: dict[str, Any] = orjson.loads(out.read_bytes())
    return results, output


async def test_quick_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    results, output = await quick_run(tmp_path, None)
    steps = results["throughput"]["steps"]
    assert steps and all(step["deliveries_per_s"] > 0 for step in steps)
    assert all(step["reordered"] == 0 for step in steps)
    assert results["asgi"]["steps"]
    assert results["connections"][0]["connected_clients"] == QUICK.connection_clients
    assert [row["clients"] for row in results["slow"]] == [20, 20]
    assert b"deliv/s" in output


async def test_quick_abuse_scenario_runs_every_attack(tmp_path: Path) -> None:
    rows = (await quick_run(tmp_path, "abuse"))[0]["abuse"]
    attacks = [*ATTACKS, "after all", *BAR_ATTACKS, *OWN_RIG_ATTACKS]
    assert [row["attack"] for row in rows] == attacks
    after_all = rows[len(ATTACKS)]
    assert after_all["clients"] == 1  # every attacker gone, the bystander still there
    measured = [row for row in rows if row is not after_all]
    assert all(row["bystander_rate_before"] > 0 for row in measured)


async def test_quick_finnhub_scenario_measures_the_mirror_and_both_dialects(
    tmp_path: Path,
) -> None:
    results = (await quick_run(tmp_path, "finnhub"))[0]["finnhub"]
    (dashboards,) = results["dashboards"]
    assert dashboards["requests"] == 160 and dashboards["upstream_429s"] == 0
    assert 0 < dashboards["upstream_calls"] <= 80
    assert dashboards["cache_hits"] + dashboards["coalesced"] > 0
    rows = results["dialects"]
    assert [row["label"].split(" @ ")[0] for row in rows] == [
        "/ws (gateway protocol)", "/ (Finnhub protocol)",
    ]  # fmt: skip
    assert all(row["deliveries_per_s"] > 0 and row["reordered"] == 0 for row in rows)


async def test_quick_bar_store_scenario_measures_every_store_beside_memory(
    tmp_path: Path,
) -> None:
    everything, output = await quick_run(tmp_path, "bar-store")
    results = everything["bar_store"]
    stores = ["memory", "sqlite", *(["postgresql"] if postgres_bin() else [])]
    assert [run["store"] for run in results["runs"]] == stores
    assert list(results["stores"]) == stores
    for run in results["runs"]:
        assert run["deliveries_per_s"] > 0 and run["lost"] == 0 and run["reordered"] == 0
        assert run["store_bars_written"] > 0 and run["bar_frames"] > 0
    for kind in stores[1:]:
        disk = results["disk"][kind]
        assert disk["rows"] > 0 and disk["bytes_per_row"] > 0
        assert results["stores"][kind]["per_symbol"]["written_bytes_per_day"] > 0
        assert results["write_cost"][kind]["bars_written"] > 0
    prune = results["prune"]
    assert prune["with index"]["deleted"] == prune["without index"]["deleted"] > 0
    assert "bars_by_age" in prune["with index"]["plan"]
    assert b"on disk per symbol trading all day" in output


async def test_quick_symbols_scenario_measures_three_arms(tmp_path: Path) -> None:
    results = (await quick_run(tmp_path, "symbols"))[0]["symbols"]
    planner, before = results["planner"], results["before planner"]
    naive = results["naive round robin (modelled)"]
    for arm in (planner, before, naive):
        assert set(arm["lag_by_demand"]) == {"p50", "p95", "p99", "max"}
        assert arm["rest_429s"] == 0
    assert planner["samples"] > 0 and planner["max_carried"] <= results["socket_slots"]
    assert planner["refused_over_cap"] == 0  # the planner keeps within the cap
    assert sum(planner["gateway_feeds"].values()) > results["socket_slots"]
    assert before["refused_over_cap"] > 0 and before["never_priced"] > 0


async def test_the_symbols_model_runs_the_real_planner_offline() -> None:
    """`python -m bench.symbols_model`, scaled down: the planner past its socket's
    slots, within them, and the naive baseline beside it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.symbols_model", "--set", "symbols_count=60",
        "--set", "symbols_clients=100", "--set", "symbols_ramp=30",
        "--set", "symbols_seconds=60", "--set", "symbols_slots=10",
        cwd=PROJECT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0
    report = orjson.loads(output)
    planner = report["planner"]
    assert planner["max_carried"] <= 10 and planner["symbols_by_feed"]["live"] < 10
    assert sum(planner["symbols_by_feed"].values()) == planner["of"] == 60
    assert report["naive"]["lag_by_symbol"]["p95"] > 0 and report["p95_by_symbol_ratio"] > 0
