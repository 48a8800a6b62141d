"""Prometheus metrics for `/metrics`, read from the hub's, the feed's and the cluster's
own counters at scrape time, so the hot path pays nothing for them (one histogram
observation per upstream message is the only exception). One registry per app: tests
run many.

Every metric is declared once in `METRICS` (name and help text); the collector can only
emit names from it, and /docs and docs/operations.md must list the same names
(tests/project/test_docs.py).

This module must never export anything that could carry the API key or a client token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub import Hub
from stock_gateway.access.admission import Admission
from stock_gateway.delivery.stats import send_queue_bytes
from stock_gateway.market_data.model import UPSTREAM_STATES
from stock_gateway.market_data.planned_upstream import PlannedUpstream
from stock_gateway.market_data.provider import REST_STATES, ProviderRest
from stock_gateway.market_data.rest_mirror import RestMirror
from stock_gateway.relay.base import Relay
from stock_gateway.runtime.supervisor import Supervisor
from stock_gateway.server.guard import ConnectionGuard

METRICS: dict[str, str] = {
    "gateway_clients": "Connected WebSocket clients",
    "gateway_clients_fast_path": "Clients whose frames are written straight to their transport",
    "gateway_clients_by_dialect": "Clients by dialect (label dialect: ws, sse, finnhub)",
    "gateway_upstream_symbols": "Symbols the upstream carries",
    "gateway_upstream_state": "1 for the upstream's current state (label state)",
    "gateway_core_tasks_down": "Core tasks (or cluster duties) waiting to restart or crash-looping",
    "gateway_client_send_queue_bytes": "Output queued for clients in server and kernel buffers",
    "gateway_upstream_lingering_symbols": "Symbols kept upstream after their last client left",
    "gateway_authenticated_users": "Distinct users connected with a verified signed token",
    "gateway_refusals_total": "Connections, handshakes and frames refused (label reason)",
    "gateway_upstream_frames_sent_total": "Subscribe and unsubscribe frames sent to Finnhub",
    "gateway_symbols_by_feed": "Wanted symbols by feed (label feed: live, sampled, polled)",
    "gateway_feed_slot_turnover_total": "Symbols that took or gave up a socket slot",
    "gateway_upstream_subscribe_messages_per_minute": "Subscribe and unsubscribe frames, last 60 s",
    "gateway_price_staleness_seconds": "Seconds since wanted symbols were priced (label quantile)",
    "gateway_rest_calls_total": "Calls made to Finnhub's REST API (quotes, status, /api/v1)",
    "gateway_rest_state": "1 for the REST side's current state (label state)",
    "gateway_rest_budget_per_minute": "REST calls a minute the gateway allows itself",
    "gateway_finnhub_rest_forwarded_total": "Calls the REST mirror (/api/v1) forwarded to Finnhub",
    "gateway_finnhub_rest_cache_hits_total": "REST mirror requests answered from its cache",
    "gateway_finnhub_rest_coalesced_total": "REST mirror requests that shared a call in flight",
    "gateway_finnhub_rest_refusals_total": "REST mirror requests refused (label reason)",
    "gateway_quotes_fetched_total": "Quotes fetched from Finnhub",
    "gateway_quotes_unavailable_total": "Quotes that could not be fetched within QUOTE_WAIT",
    "gateway_upstream_messages_total": "Upstream messages received",
    "gateway_upstream_trades_total": "Upstream trades received",
    "gateway_upstream_malformed_total": "Upstream messages or trades skipped as malformed",
    "gateway_upstream_reconnects_total": "Upstream reconnect attempts",
    "gateway_price_updates_sent_total": "Price updates handed to clients",
    "gateway_conflated_updates_total": "Price updates superseded before they were sent",
    "gateway_slow_consumer_disconnects_total": "Clients closed as slow consumers",
    "gateway_handoff_seconds": "Upstream message arrival to its hand-off to every client",
    "gateway_cluster_leader": "1 if this process holds the Finnhub socket (cluster mode)",
    "gateway_cluster_degraded": "1 while Redis is unreachable (cluster mode)",
    "gateway_cluster_nodes": "Gateway processes in the cluster (cluster mode)",
    "gateway_cluster_symbols": "Symbols wanted cluster-wide (cluster mode)",
    "gateway_cluster_bars_skipped_total": "Malformed stored or published bars skipped (cluster)",
    "gateway_bar_store_degraded": "1 while the bar store's writes or reads fail (bars in memory)",
    "gateway_bar_store_slow": "1 while a bar store call has waited over a second",
    "gateway_bar_store_read_timeouts_total": "Bar store reads not answered within 5 s",
    "gateway_bar_store_trades_held": "Trades waiting for their symbol's stored bars to load",
    "gateway_bar_store_trades_counted_early_total": (
        "Trades counted before their symbol's stored bars loaded (too many held)"
    ),
    "gateway_bar_store_backlog": "Bars waiting to be written to the bar store",
    "gateway_bar_store_last_write_seconds": "How long the bar store's last batch write took",
    "gateway_bar_store_write_seconds_total": "Time spent writing batches to the bar store",
    "gateway_bar_store_writes_total": "Batches written to the bar store",
    "gateway_bar_store_bars_written_total": "Bars written to the bar store",
    "gateway_bar_store_bars_dropped_total": "Bars not written: the bar store's backlog was full",
    "gateway_bar_store_bars_skipped_total": "Malformed stored bars skipped when read",
}


class MeteredParts(Protocol):
    """What the collector reads of the running gateway (`wiring.Running` has it all)."""

    hub: Hub
    upstream: PlannedUpstream
    relay: Relay
    rest: ProviderRest
    mirror: RestMirror
    supervisor: Supervisor
    admission: Admission
    guard: ConnectionGuard


DIALECTS = ("ws", "sse", "finnhub")  # always reported, zero included


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name], value)


def _counter(name: str, value: float) -> CounterMetricFamily:
    # Declared with the `_total` that scrapes show; prometheus_client adds it back.
    return CounterMetricFamily(name.removesuffix("_total"), METRICS[name], value)


class GatewayCollector(Collector):
    def __init__(self, running: Callable[[], MeteredParts | None]) -> None:
        self._running = running

    def collect(self) -> Iterator[Metric]:
        running = self._running()
        if running is None:
            return
        hub, counters = running.hub, running.upstream.counters
        yield _gauge("gateway_clients", hub.client_count)
        yield _gauge("gateway_clients_fast_path", hub.stats.clients_fast_path)
        dialects = GaugeMetricFamily(
            "gateway_clients_by_dialect", METRICS["gateway_clients_by_dialect"], labels=["dialect"]
        )
        for dialect in DIALECTS:
            dialects.add_metric([dialect], hub.stats.clients_by_dialect.get(dialect, 0))
        yield dialects
        yield _gauge("gateway_authenticated_users", running.admission.users)
        yield _gauge("gateway_upstream_symbols", len(hub.symbols()))
        state = GaugeMetricFamily(
            "gateway_upstream_state", METRICS["gateway_upstream_state"], labels=["state"]
        )
        for state_name in UPSTREAM_STATES:
            # The hub's view, as /health shows it: on a cluster follower the local feed
            # never runs, and the state arrives through Redis.
            state.add_metric([state_name], 1.0 if hub.upstream_state == state_name else 0.0)
        yield state
        yield _gauge("gateway_core_tasks_down", len(running.supervisor.down))
        yield _gauge("gateway_client_send_queue_bytes", send_queue_bytes(hub.clients))
        yield _gauge("gateway_upstream_lingering_symbols", len(hub.capacity.lingering))
        refusals = CounterMetricFamily(
            "gateway_refusals", METRICS["gateway_refusals_total"], labels=["reason"]
        )
        refused = {**running.guard.refused, **running.admission.refused}
        if hub.bars is not None and hub.bars.budget is not None:
            refused["history_bytes"] = hub.bars.budget.refused
        for reason, count in sorted(refused.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield _counter("gateway_upstream_frames_sent_total", counters.frames_sent)
        yield from _feed_metrics(running.upstream.report())
        yield _counter("gateway_rest_calls_total", running.rest.calls)
        rest_state = GaugeMetricFamily(
            "gateway_rest_state", METRICS["gateway_rest_state"], labels=["state"]
        )
        for rest_state_name in REST_STATES:
            matches = running.rest.state == rest_state_name
            rest_state.add_metric([rest_state_name], 1.0 if matches else 0.0)
        yield rest_state
        yield _gauge("gateway_rest_budget_per_minute", running.rest.budget.per_minute)
        mirror = running.mirror
        yield _counter("gateway_finnhub_rest_forwarded_total", mirror.forwarded)
        yield _counter("gateway_finnhub_rest_cache_hits_total", mirror.cache_hits)
        yield _counter("gateway_finnhub_rest_coalesced_total", mirror.coalesced)
        mirror_refusals = CounterMetricFamily(
            "gateway_finnhub_rest_refusals",
            METRICS["gateway_finnhub_rest_refusals_total"],
            labels=["reason"],
        )
        for reason, count in sorted(mirror.refused.items()):
            mirror_refusals.add_metric([reason], count)
        yield mirror_refusals
        if hub.quotes is not None:
            yield _counter("gateway_quotes_fetched_total", hub.quotes.fetched)
            yield _counter("gateway_quotes_unavailable_total", hub.quotes.unavailable)
        stats = hub.stats
        yield _counter("gateway_upstream_messages_total", counters.messages)
        yield _counter("gateway_upstream_trades_total", counters.trades)
        yield _counter("gateway_upstream_malformed_total", counters.malformed)
        yield _counter("gateway_upstream_reconnects_total", counters.reconnects)
        yield _counter("gateway_price_updates_sent_total", stats.price_updates_sent)
        yield _counter("gateway_conflated_updates_total", stats.conflated_updates)
        yield _counter("gateway_slow_consumer_disconnects_total", stats.slow_consumer_disconnects)
        cluster = running.relay.cluster_view()
        if cluster is not None:
            yield _gauge("gateway_cluster_leader", 1.0 if cluster.role == "leader" else 0.0)
            yield _gauge("gateway_cluster_degraded", 1.0 if cluster.degraded else 0.0)
            yield _gauge("gateway_cluster_nodes", cluster.nodes)
            yield _gauge("gateway_cluster_symbols", cluster.symbols)
            yield _counter("gateway_cluster_bars_skipped_total", cluster.bars_skipped)
        recorder = hub.bars.recorder if hub.bars is not None else None
        if recorder is not None:
            yield _gauge("gateway_bar_store_degraded", 1.0 if recorder.state == "degraded" else 0.0)
            yield _gauge("gateway_bar_store_slow", 1.0 if recorder.slow else 0.0)
            yield _counter("gateway_bar_store_read_timeouts_total", recorder.timeouts)
            yield _gauge("gateway_bar_store_trades_held", recorder.loads.held)
            yield _counter(
                "gateway_bar_store_trades_counted_early_total", recorder.loads.counted_early
            )
            yield _gauge("gateway_bar_store_backlog", recorder.backlog)
            yield _gauge("gateway_bar_store_last_write_seconds", recorder.last_write_seconds)
            yield _counter("gateway_bar_store_write_seconds_total", recorder.write_seconds_total)
            yield _counter("gateway_bar_store_writes_total", recorder.writes)
            yield _counter("gateway_bar_store_bars_written_total", recorder.written)
            yield _counter("gateway_bar_store_bars_dropped_total", recorder.dropped)
            yield _counter("gateway_bar_store_bars_skipped_total", recorder.store.skipped)


def _feed_metrics(report: dict[str, Any]) -> Iterator[Metric]:
    by_feed = GaugeMetricFamily(
        "gateway_symbols_by_feed", METRICS["gateway_symbols_by_feed"], labels=["feed"]
    )
    for feed, count in report["symbols_by_feed"].items():
        by_feed.add_metric([feed], count)
    yield by_feed
    yield _counter("gateway_feed_slot_turnover_total", report["slot_turnover"])
    per_minute = report["upstream_subscribe_messages_per_minute"]
    yield _gauge("gateway_upstream_subscribe_messages_per_minute", per_minute)
    stale = GaugeMetricFamily(
        "gateway_price_staleness_seconds",
        METRICS["gateway_price_staleness_seconds"],
        labels=["quantile"],
    )
    for name, seconds in report["price_staleness_seconds"].items():
        stale.add_metric([name], seconds)
    yield stale


def create_registry(
    running: Callable[[], MeteredParts | None],
) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the gateway's collector, and the hand-off histogram to feed the hub."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(running))
    handoff = Histogram(
        "gateway_handoff_seconds",
        METRICS["gateway_handoff_seconds"],
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=registry,
    )
    return registry, handoff
