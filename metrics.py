"""Prometheus metrics for `/metrics`, read from the hub's and the feed's own counters
at scrape time, so the hot path pays nothing for them (one histogram observation per
upstream message is the only exception). One registry per app: tests run many.

This module must never export anything that could carry the API key or a client token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import Cluster
from finnhub_feed import FinnhubFeed
from hub import Hub
from protocol import UPSTREAM_STATES
from supervisor import Supervisor


class Running(Protocol):
    hub: Hub
    feed: FinnhubFeed
    supervisor: Supervisor
    cluster: Cluster | None


class GatewayCollector(Collector):
    def __init__(self, running: Callable[[], Running | None]) -> None:
        self._running = running

    def collect(self) -> Iterator[Metric]:
        running = self._running()
        if running is None:
            return
        hub, feed = running.hub, running.feed
        yield GaugeMetricFamily("gateway_clients", "Connected WebSocket clients", hub.client_count)
        yield GaugeMetricFamily(
            "gateway_clients_fast_path",
            "Clients whose frames are written straight to their transport",
            hub.fast_path_count,
        )
        yield GaugeMetricFamily(
            "gateway_upstream_symbols", "Symbols the upstream carries", len(hub.symbols())
        )
        state = GaugeMetricFamily(
            "gateway_upstream_state", "1 for the upstream's current state", labels=["state"]
        )
        for state_name in UPSTREAM_STATES:
            # The hub's view, as /health shows it: on a cluster follower the local feed
            # never runs, and the state arrives through Redis.
            state.add_metric([state_name], 1.0 if hub.upstream_state == state_name else 0.0)
        yield state
        yield GaugeMetricFamily(
            "gateway_core_tasks_down",
            "Core tasks (feed, broadcaster, cluster) waiting to be restarted after a crash",
            len(running.supervisor.down),
        )
        stats = hub.stats
        counters = [
            ("gateway_upstream_messages", "Upstream messages received", feed.messages_received),
            ("gateway_upstream_trades", "Upstream trades received", feed.trades_received),
            ("gateway_upstream_malformed", "Upstream messages skipped", feed.malformed_messages),
            ("gateway_upstream_reconnects", "Upstream reconnect attempts", feed.reconnects),
            ("gateway_price_updates_sent", "Updates handed to clients", stats.price_updates_sent),
            ("gateway_conflated_updates", "Updates superseded unsent", stats.conflated_updates),
            (
                "gateway_slow_consumer_disconnects",
                "Slow clients closed",
                stats.slow_consumer_disconnects,
            ),
        ]
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value)
        cluster = running.cluster
        if cluster is not None:
            gauges: list[tuple[str, str, float]] = [
                ("gateway_cluster_leader", "1 if this process holds the Finnhub socket",
                 1.0 if cluster.role == "leader" else 0.0),
                ("gateway_cluster_degraded", "1 while Redis is unreachable",
                 1.0 if cluster.degraded else 0.0),
                ("gateway_cluster_nodes", "Gateway processes in the cluster", cluster.nodes),
                ("gateway_cluster_symbols", "Symbols wanted cluster-wide",
                 len(cluster.cluster_symbols)),
            ]  # fmt: skip
            for name, documentation, reading in gauges:
                yield GaugeMetricFamily(name, documentation, reading)


def create_registry(running: Callable[[], Running | None]) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the gateway's collector, and the hand-off histogram to feed the hub."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(running))
    handoff = Histogram(
        "gateway_handoff_seconds",
        "Time from an upstream message's arrival to its hand-off to every client outbox",
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=registry,
    )
    return registry, handoff
