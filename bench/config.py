"""The benchmark's settings: `Config` (the full run) and `QUICK` (the smoke run, `--quick`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound=Any)  # a dataclass


@dataclass
class Config:
    clients: int = 1000
    rates: tuple[float, ...] = (50, 100, 150, 200, 250, 300, 400, 500)
    warmup: float = 2.0
    measure: float = 5.0
    drain: float = 3.0
    connection_clients: int = 10_000
    connection_rate: float = 100.0
    connection_symbols: int = 200  # past the upstream's subscribe burst: paced in
    slow_measure: float = 30.0
    soak_seconds: float = 600.0
    cluster_rates: tuple[float, ...] = (50, 100, 150)
    slow_consumer_timeout: float = 5.0
    # The never-reading clients must fill their buffers within the run: a small kernel
    # send buffer per client (a production setting too) instead of Linux's autotuned MBs.
    client_send_buffer: int = 16384
    gateway_flags: tuple[str, ...] = (
        "--http",
        "stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol",
        "--ws-per-message-deflate",
        "false",
    )
    # The gateway's source tree (None: this checkout). `--reference DIR` measures another
    # revision (e.g. a `git worktree add`) in the same run, for ratios.
    gateway_dir: Path | None = None
    # The simulator's upstream messages: one every `upstream_tick` seconds carrying every
    # trade of that interval, round-robin over the symbols (Finnhub batches trades; the
    # model is in BENCHMARKS.md). 0.005 was the previous model: one trade per message.
    upstream_tick: float = 0.05
    # Upstream trades per second for the delivery scenario's batched, throttled and SSE
    # rows (the default protocol uses `rates`).
    batched_rates: tuple[float, ...] = (200, 500, 1000, 1500, 2000, 3000)
    throttled_rates: tuple[float, ...] = (2000, 5000, 10000, 20000)
    sse_rates: tuple[float, ...] = (20, 50, 100)
    # The bars scenario: upstream trades per second over its 50 symbols.
    bars_rate: float = 10_000
    # The bar-store scenario (at `bars_rate` over 50 symbols): rounds of one run per
    # store, alternated; clients on 5 symbols' prices each and on 5 symbols' 1m bars;
    # the symbols of the retention prune's timed table (none: not timed).
    store_rounds: int = 6
    store_price_clients: int = 100
    store_bar_clients: int = 100
    store_measure: float = 10.0
    prune_symbols: int = 10
    cost_seconds: float = 60.0  # simulated seconds of bars whose writing is timed
    # The abuse scenario: each attack's length, the window before it, and the pause
    # after it (past HANDSHAKE_TIMEOUT and SLOW_CONSUMER_TIMEOUT, so each starts clean).
    abuse_seconds: float = 20.0
    abuse_baseline: float = 3.0
    abuse_pause: float = 12.0
    # The measuring window runs this long past each attack (it ends with the attack's
    # own clean-up); the attacks on a rig of their own take `abuse_own_baseline` first.
    abuse_tail: float = 1.0
    abuse_own_baseline: float = 2.0
    # The finnhub scenario: dashboard loads through the REST mirror (so many at once),
    # once per plan (REST calls a minute, Finnhub's and the gateway's), and the trade
    # rates at which the two dialects are compared.
    dashboard_loads: int = 1000
    dashboard_concurrency: int = 50
    dashboard_plans: tuple[int, ...] = (300, 60)
    finnhub_rates: tuple[float, ...] = (100, 200)
    # The symbols scenario (issue 29): symbols over clients, socket slots, REST calls a
    # minute, market trades a second (Zipf over the symbols), each arm's length, and
    # the ramp over which the clients arrive (shuffled: BENCHMARKS.md says why 600 s).
    symbols_count: int = 500
    symbols_clients: int = 1000
    symbols_per_client: int = 5
    symbols_slots: int = 50
    symbols_rest_rate: int = 60
    symbols_rate: float = 100.0
    symbols_seconds: float = 720.0
    symbols_ramp: float = 600.0
    symbols_before_arm: int = 1  # 0: skip the before-the-planner arm (scaled experiments)


# The smoke run proves every scenario runs and reports every figure, not the figures:
# the shortest windows and smallest loads that still take every code path.
QUICK = Config(
    clients=20,
    rates=(20, 40),
    warmup=0.25,
    measure=1.0,
    drain=0.5,
    connection_clients=100,
    connection_rate=20,
    connection_symbols=50,
    slow_measure=1.0,
    soak_seconds=5.0,
    cluster_rates=(20,),
    slow_consumer_timeout=1.0,
    batched_rates=(40,),
    throttled_rates=(200,),
    sse_rates=(20,),
    bars_rate=200,
    store_rounds=1,
    store_price_clients=5,
    store_bar_clients=5,
    store_measure=1.0,
    prune_symbols=1,
    cost_seconds=2.0,
    abuse_seconds=0.3,
    abuse_baseline=0.2,
    abuse_pause=0.1,
    abuse_tail=0.3,
    abuse_own_baseline=0.2,
    dashboard_loads=40,
    dashboard_concurrency=10,
    dashboard_plans=(60,),
    finnhub_rates=(20,),
    symbols_count=30,
    symbols_clients=20,
    symbols_per_client=3,
    symbols_slots=5,
    symbols_seconds=4.0,
    symbols_ramp=2.0,
)


def with_overrides(settings: T, overrides: Iterable[str]) -> T:
    """A dataclass `settings` with `FIELD=VALUE` overrides (`--set`), each value of the
    field's own type."""
    for override in overrides:
        field, _, value = override.partition("=")
        kind = type(getattr(settings, field))
        settings = dataclasses.replace(settings, **{field: kind(value)})
    return settings
