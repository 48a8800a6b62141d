"""The bar store beside the in-memory store, in one run: `python -m bench --scenario bar-store`.

Each run is one gateway process as deployed, fed `bars_rate` trades/s over 50 symbols
by the simulator (its fixed rate, as the bars scenario), with one store: memory://,
sqlite (a fresh file) or postgresql (a fresh database on a throw-away server started
here; that row is skipped, loudly, without PostgreSQL's binaries). A round runs every
store once; the order reverses every round (memory, sqlite, postgresql, then back), so
the machine's drift falls on each store alike, and every figure is a median over the
rounds; a store's ratio to memory is taken within its round, then the median.

The load, the same in every run: one client following every symbol's prices (batched
100 ms), `store_price_clients` following 5 symbols' prices each (the default protocol:
one frame per trade; the fan-out path) and `store_bar_clients` following 5 symbols' 1m
bars. Measured over the window: the gateway's CPU per million upstream trades and per
million deliveries (and deliveries per CPU-second), the updates lost, the latency, the
CPU of its threads other than the event loop's (the SQLite store's), the postgres
server's CPU, and the store's own figures from /metrics (`gateway_bar_store_*`: write
latency, backlog, drops). After each run, the gateway stopped cleanly (every bar
written): bytes on disk per stored row (bench/bar_store_costs.py), and from them the
steady state per symbol and day under the default retention. Last, what the runs
cannot resolve on a shared machine: the store's own CPU per bar, timed in this process
(`write_cost`), and the hourly retention prune of a large SQLite table, timed without
and with its (interval, t) index.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import warnings
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import asyncpg

from bench.bar_store_costs import (
    combined,
    postgres_disk,
    prune_timing,
    sqlite_disk,
    steady_state,
    write_cost,
)
from bench.config import Config
from bench.measure import collect, measure
from bench.processes import CLOCK_TICKS, Stack, cpu_seconds, load, pin, stack
from stock_gateway.bars.sqlite_store import AGE_INDEX
from tests.support.postgres_server import PostgresServer, postgres_bin

STORES = ("memory", "sqlite", "postgresql")
NO_POSTGRES = "NO POSTGRESQL SERVER BINARIES: the postgresql row is SKIPPED"


def thread_cpu_seconds(pid: int) -> float:
    """utime + stime of a process's threads other than its main one (the event loop's)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        if task.name == str(pid):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def sizes(path: str) -> dict[str, int]:
    """A SQLite file's size and its WAL's, while a gateway writes it."""
    files = {"db": Path(path), "wal": Path(f"{path}-wal")}
    return {name: file.stat().st_size for name, file in files.items() if file.exists()}


async def store_metrics(running: Stack) -> dict[str, float]:
    """The gateway's `gateway_bar_store_*` figures (no labels), by name without prefix."""
    async with running.session.get(running.gateway_url + "/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_bar_store_"):
            name, _, value = line.partition(" ")
            found[name.removeprefix("gateway_bar_store_")] = float(value)
    return found


async def one_run(
    config: Config, kind: str, url: str, round_index: int, postgres_pid: int | None
) -> dict[str, Any]:
    universe = [f"S{index:02d}" for index in range(50)]
    prices = config.store_price_clients
    async with (
        stack(config, {"BAR_STORE_URL": url}) as running,
        load(running, universe, clients=1, query="batch_ms=100") as anchor,
        load(running, universe, clients=prices, first_index=1, per_client=5) as fanout,
        load(
            running, universe, clients=config.store_bar_clients, first_index=1 + prices,
            per_client=5, bars="1m",
        ) as charts,
    ):  # fmt: skip
        await running.wait_upstream_carries(universe)
        await running.set_rate(config.bars_rate)
        await asyncio.sleep(config.warmup)
        before = await store_metrics(running)
        threads_before = thread_cpu_seconds(running.gateway_pid)
        server_before = cpu_seconds(postgres_pid) if postgres_pid else 0.0
        samples: list[dict[str, float]] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                samples.append(await store_metrics(running))

        sampler = asyncio.create_task(sample())
        pids = (anchor.child.pid, fanout.child.pid, charts.child.pid)
        label = f"{kind} (round {round_index + 1})"
        window = await measure(running, label, config.bars_rate, config.store_measure, pids)
        sampler.cancel()
        with suppress(asyncio.CancelledError):
            await sampler
        after = await store_metrics(running)
        # The file as it is while the gateway writes (its WAL goes at a clean shutdown).
        on_disk = sizes(url.removeprefix("sqlite:///")) if url.startswith("sqlite:") else {}
        seconds = window.end - window.start
        threads = thread_cpu_seconds(running.gateway_pid) - threads_before
        server = (cpu_seconds(postgres_pid) - server_before) if postgres_pid else None
        (row,) = await collect(running, [window], [anchor, fanout], config.drain)
        bar_report = await charts.finish()
    writes = after["writes_total"] - before["writes_total"]
    trades = row["upstream_trades_per_s"] * row["seconds"]
    row.update(
        store=kind,
        round=round_index + 1,
        gateway_cpu_s_per_million_trades=(
            round(window.cpu_seconds / (trades / 1e6), 2) if trades else None
        ),
        deliveries_per_cpu_second=(
            round(row["deliveries_per_s"] * seconds / window.cpu_seconds)
            if window.cpu_seconds
            else None
        ),
        other_threads_cpu_share=round(threads / seconds, 4),
        postgres_server_cpu_share=round(server / seconds, 4) if server is not None else None,
        bar_frames=sum(second["count"] for second in bar_report["seconds"].values()),
        store_writes=writes,
        store_bars_written=after["bars_written_total"] - before["bars_written_total"],
        store_write_ms_mean=(
            round((after["write_seconds_total"] - before["write_seconds_total"]) / writes * 1000, 2)
            if writes
            else None
        ),
        store_write_ms_worst_sampled=round(
            max((s["last_write_seconds"] for s in [after, *samples]), default=0.0) * 1000, 2
        ),
        store_backlog_max_sampled=max(s["backlog"] for s in [before, after, *samples]),
        store_bars_dropped=after["bars_dropped_total"],
        store_degraded=max(s["degraded"] for s in [before, after, *samples]),
        sqlite_bytes_while_running=on_disk or None,
    )
    row.pop("per_second_deliveries_p99_max", None)
    return row


async def _postgres(root: Path, resources: AsyncExitStack) -> tuple[str, int] | None:
    """A throw-away PostgreSQL server (tests/support/postgres_server.py) on the load's core: its
    URL and its postmaster's pid; None, loudly, without PostgreSQL's binaries."""
    if postgres_bin() is None:
        warnings.warn(NO_POSTGRES, stacklevel=1)
        sys.stderr.write(f"\n*** {NO_POSTGRES} ***\n\n")
        return None
    server = PostgresServer(root / "postgres")

    def start() -> int:
        root.chmod(0o711)  # the server runs as `postgres` when we are root: it must get in
        (root / "postgres").mkdir()
        server.start()
        return int((root / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])

    pid = await asyncio.to_thread(start)
    resources.callback(server.stop)
    pin(pid, {(os.cpu_count() or 1) - 1})  # its backends, forked later, inherit it
    return server.url, pid


async def bar_store(config: Config) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    disk: dict[str, list[dict[str, Any]]] = {kind: [] for kind in STORES[1:]}
    with tempfile.TemporaryDirectory(prefix="bench-bar-store-") as directory:
        root = Path(directory)
        async with AsyncExitStack() as resources:
            postgres = await _postgres(root, resources)
            kinds = [kind for kind in STORES if kind != "postgresql" or postgres is not None]

            async def fresh(kind: str, name: str) -> str:
                """A new, empty store: every run starts as memory:// does, with no
                history to load (a restored history would be a difference of its own)."""
                if kind == "sqlite":
                    return f"sqlite:///{root / name}.sqlite3"
                if kind == "postgresql" and postgres is not None:
                    admin = await asyncpg.connect(postgres[0])
                    await admin.execute(f"CREATE DATABASE {name}")
                    await admin.close()
                    return postgres[0].rsplit("/", 1)[0] + f"/{name}"
                return "memory://"

            for round_index in range(config.store_rounds):
                for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
                    url = await fresh(kind, f"run{round_index}")
                    pid = postgres[1] if kind == "postgresql" and postgres is not None else None
                    runs.append(await one_run(config, kind, url, round_index, pid))
                    if kind == "sqlite":
                        disk[kind].append(sqlite_disk(Path(url.removeprefix("sqlite:///"))))
                    elif kind == "postgresql":
                        disk[kind].append(await postgres_disk(url))
            # The store's own CPU, measured in this process on fresh stores, in turn.
            costs = {
                kind: await write_cost(
                    await fresh(kind, "cost"), config.bars_rate, 50, config.cost_seconds
                )
                for kind in kinds
            }
        prune = await asyncio.to_thread(prune_timing, root, config.prune_symbols, AGE_INDEX)
    return {
        "rate": config.bars_rate,
        "symbols": 50,
        "postgresql": "measured" if "postgresql" in kinds else NO_POSTGRES,
        "runs": runs,
        "disk": {kind: combined(files) for kind, files in disk.items() if files},
        "stores": _summary(runs, {kind: combined(files) for kind, files in disk.items()}, costs),
        "write_cost": costs,
        "prune": prune,
    }


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def _summary(
    runs: list[dict[str, Any]], disk: dict[str, dict[str, Any]], costs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    per_delivery = "gateway_cpu_s_per_million"
    memory = {run["round"]: run[per_delivery] for run in runs if run["store"] == "memory"}
    fanout_cpu = _median([run["gateway_cpu_share"] for run in runs if run["store"] == "memory"])
    baseline = costs["memory"]["cpu_share_of_a_core"]
    stores: dict[str, Any] = {}
    for kind in STORES:
        mine = [run for run in runs if run["store"] == kind]
        if not mine:
            continue

        def median_of(key: str, runs_: list[dict[str, Any]] = mine) -> float | None:
            return _median([run[key] for run in runs_])

        # Each run against memory's run of the same round: neighbours in time.
        ratios = [
            run[per_delivery] / memory[run["round"]]
            for run in mine
            if run[per_delivery] and memory.get(run["round"])
        ]
        bytes_per_row = disk[kind]["bytes_per_row"] if disk.get(kind) else None
        stores[kind] = {
            "runs": len(mine),
            "cpu_s_per_million_trades": median_of("gateway_cpu_s_per_million_trades"),
            "cpu_s_per_million_deliveries": median_of(per_delivery),
            "deliveries_per_cpu_second": median_of("deliveries_per_cpu_second"),
            "deliveries_per_s": median_of("deliveries_per_s"),
            "cpu_per_delivery_vs_memory": _median(list(ratios)),
            "cpu_per_delivery_vs_memory_range": (
                [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None
            ),
            "lost": sum(run["lost"] for run in mine),
            "reordered": sum(run["reordered"] for run in mine),
            "p50_ms": _median([run["latency_ms"]["p50"] for run in mine]),
            "p99_ms": _median([run["latency_ms"]["p99"] for run in mine]),
            "other_threads_cpu_share": median_of("other_threads_cpu_share"),
            "postgres_server_cpu_share": median_of("postgres_server_cpu_share"),
            "write_ms_mean": median_of("store_write_ms_mean"),
            "write_ms_worst": max(run["store_write_ms_worst_sampled"] for run in mine),
            "backlog_max": max(run["store_backlog_max_sampled"] for run in mine),
            "bars_written_per_s": _median(
                [run["store_bars_written"] / run["seconds"] for run in mine]
            ),
            "dropped": sum(run["store_bars_dropped"] for run in mine),
            "degraded": max(run["store_degraded"] for run in mine),
            "store_cpu_share": round(costs[kind]["cpu_share_of_a_core"] - baseline, 5),
            "store_cpu_vs_fanout": (
                round((costs[kind]["cpu_share_of_a_core"] - baseline) / fanout_cpu, 4)
                if fanout_cpu
                else None
            ),
            "bytes_per_row": bytes_per_row,
            "per_symbol": steady_state(bytes_per_row) if bytes_per_row else None,
        }
    return stores


def bar_store_lines(result: dict[str, Any]) -> list[str]:
    """The scenario's table and its disk figures, for the closing summary."""
    if not result:
        return []
    lines = [
        f"bar store at {result['rate']:g} trades/s over {result['symbols']} symbols "
        f"(medians over rounds; postgresql: {result['postgresql']})",
        f"{'store':<11} {'cpu s/M trades':>14} {'cpu s/M deliv':>13} {'deliv/cpu-s':>11} "
        f"{'vs memory':>9} {'range':>13} {'lost':>5} {'p50/p99':>9} {'store thr':>9} "
        f"{'write ms':>8} {'backlog':>7} {'B/row':>6}",
    ]
    for kind, row in result["stores"].items():
        spread = row["cpu_per_delivery_vs_memory_range"] or ["-", "-"]
        latency = f"{row['p50_ms']:g}/{row['p99_ms']:g}"
        lines.append(
            f"{kind:<11} {row['cpu_s_per_million_trades']!s:>14} "
            f"{row['cpu_s_per_million_deliveries']!s:>13} {row['deliveries_per_cpu_second']!s:>11} "
            f"{row['cpu_per_delivery_vs_memory']!s:>9} {f'{spread[0]}-{spread[1]}':>13} "
            f"{row['lost']:>5} {latency:>9} "
            f"{row['other_threads_cpu_share']!s:>9} {row['write_ms_mean']!s:>8} "
            f"{row['backlog_max']:>7g} {row['bytes_per_row']!s:>6}"
        )
    for kind, row in result["stores"].items():
        cost = row["per_symbol"]
        if cost is None:
            continue
        mib = 1024 * 1024
        lines.append(
            f"{kind} on disk per symbol trading all day ({cost['bytes_per_row']} B a row, "
            f"{sum(cost['rows_written_per_day'].values())} rows a day): written "
            f"{cost['written_bytes_per_day'] / mib:.1f} MiB a day; kept under the default "
            f"retention {cost['kept_bytes_after_prune'] / mib:.1f} to "
            f"{cost['kept_bytes_before_prune'] / mib:.1f} MiB (after / before the hourly "
            "prune; 1d bars counted at 10 years)"
        )
    for kind, row in result["stores"].items():
        cost = result["write_cost"][kind]
        lines.append(
            f"{kind} recording and writing, timed in-process: {cost['cpu_us_per_bar']} us CPU "
            f"a bar written ({cost['bars_written']} bars); beyond memory:// "
            f"{row['store_cpu_share']} of a core, {100 * (row['store_cpu_vs_fanout'] or 0):.1f}% "
            "of the gateway's CPU with memory://"
        )
    prune = result["prune"]
    lines.append(
        f"sqlite hourly prune of {prune['symbols']} symbols' steady state ({prune['rows']} rows, "
        f"{prune['bytes'] / 1024 / 1024:.1f} MiB): {prune['without index']['seconds']} s without "
        f"the (interval, t) index, {prune['with index']['seconds']} s with it "
        f"({prune['with index']['deleted']} rows deleted; index built in "
        f"{prune['index_build_seconds']} s, file {prune['bytes_with_index'] / 1024 / 1024:.1f} MiB)"
    )
    return lines
