"""Run the fan-out benchmark: `python -m bench [--quick] [--out FILE]`.

Scenarios (each bounded in time, stopping by itself):
  throughput    1,000 clients on the same 20 symbols, upstream rate ramped step by step
  connections   10,000 clients, 5 symbols each out of 200, a modest rate
  slow          throughput's clients at half the best rate, then plus 10% that never read
  cluster       (only when asked) one process vs cluster mode with 1 and 2 processes
  delivery      (only when asked) default protocol vs a bare picows server (one frame per
                trade), batched 50 ms, throttled 250 ms, SSE beside WebSockets
  abuse         (only when asked) every attack class, sustained, against default settings:
                a bystander's rate, /health latency and RSS during each
  soak          (only when asked) churning clients plus upstream drops for --soak-seconds,
                RSS sampled throughout: memory must come back to where it started
  bar-store     (only when asked) the bar store beside memory://, alternated in one run at
                10,000 trades/s over 50 symbols: CPU per million trades, the fan-out's CPU
                per delivery as a ratio to memory, write latency and backlog, bytes on disk
                per row and per symbol-day (memory, sqlite, postgresql when installed)
  finnhub       (only when asked) 1,000 dashboard loads through the REST mirror (/api/v1):
                upstream calls, cache hits, p50/p99; Finnhub's protocol at / beside /ws:
                deliveries per CPU-second
  symbols       (only when asked) 500 symbols over 1,000 clients past a 50-symbol socket
                and 60 REST calls a minute, demand and trades Zipf: how long each held
                price is out of date (p50/p95/p99), never priced, feeds, subscribe
                messages and REST calls a minute, 429s; the planner beside the gateway
                before it (refused past the cap) and a naive round-robin poll (modelled)

`--reference DIR` also runs the throughput scenario on the gateway in DIR (another
revision, e.g. from `git worktree add /tmp/ref <rev>`), with `--reference-flags` for
its server flags, so the two are compared in one run.

Processes: the simulator and the load clients are pinned to the last core, the
gateway (`uvicorn gateway:app`, as deployed) to the first, where there are two.
Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

import orjson

from bench.config import QUICK, Config, with_overrides
from bench.report import summary
from bench.scenarios import run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[
            "throughput",
            "asgi",
            "connections",
            "slow",
            "soak",
            "cluster",
            "abuse",
            "delivery",
            "bars",
            "finnhub",
            "bar-store",
            "symbols",
        ],
    )
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default 600)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a Config field, e.g. --set symbols_count=100 (scaled runs)",
    )  # fmt: skip
    parser.add_argument("--out", default="bench-results/latest.json")
    parser.add_argument("--reference", type=Path, help="another revision's tree to compare")
    parser.add_argument(
        "--reference-flags", default="", help="its uvicorn flags (default: the current ones)"
    )
    args = parser.parse_args()
    config = QUICK if args.quick else Config()
    if args.soak_seconds:
        config = dataclasses.replace(config, soak_seconds=args.soak_seconds)
    config = with_overrides(config, args.set)
    scenarios = args.scenario or ["throughput", "asgi", "connections", "slow"]
    results = asyncio.run(
        run(config, scenarios, args.reference, tuple(args.reference_flags.split()))
    )
    summary(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    sys.stdout.write(f"\nwrote {out}\n")


if __name__ == "__main__":
    main()
