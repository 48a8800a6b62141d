"""The monitoring profile: every query of the Grafana dashboard names metrics a real
gateway exports, with the labels it uses (a single process, and a cluster node for the
cluster's metrics); Prometheus's configuration parses (promtool) and scrapes the
replicas the compose file runs; Grafana is provisioned with that dashboard and that
Prometheus; and `docker compose --profile monitoring config` validates where Docker
Compose exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stock_gateway.simulator.market import MarketSimulator, serve
from tests.support.deploy_files import compose, nginx_config
from tests.support.helpers import (
    PROJECT,
    TEST_KEY,
    GatewayUnderTest,
    Market,
    RedisServer,
    run_gateway,
    settings_for,
    trade,
)

MONITORING = PROJECT / "monitoring"
DASHBOARD: dict[str, Any] = json.loads(
    (MONITORING / "grafana" / "dashboards" / "gateway.json").read_text(encoding="utf-8")
)
PROMETHEUS: dict[str, Any] = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
# Labels Prometheus adds to every scraped series itself.
SCRAPE_LABELS = {"instance", "job"}
_SELECTOR = re.compile(r"\b(gateway_\w+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str
    legend: str


def dashboard_queries() -> list[Query]:
    return [
        Query(panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in DASHBOARD["panels"]
        for target in panel.get("targets", [])
    ]


Series = dict[str, list[dict[str, str]]]  # sample name -> the label sets it has


def parse_scrape(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


def problems_with(query: Query, series: Series) -> list[str]:
    """What in `query` the scrape cannot answer: unknown metrics, label matchers no
    sample satisfies, grouping and legend labels no metric of the query has."""
    found: list[str] = []
    names = []
    for name, matchers in _SELECTOR.findall(query.expr):
        names.append(name)
        if name not in series:
            found.append(f"{name} is not exported")
            continue
        for label, operator, value in _MATCHER.findall(matchers):
            if operator == "=":
                fits = any(labels.get(label) == value for labels in series[name])
            else:  # a pattern or a negation: the label must exist at all
                fits = any(label in labels for labels in series[name])
            if not fits:
                found.append(f'{name} has no sample with {label}{operator}"{value}"')
    labels = {label for names_ in map(series.get, names) for s in names_ or [] for label in s}
    grouped = {g.strip() for group in _GROUPING.findall(query.expr) for g in group.split(",")}
    for label in (grouped | set(_LEGEND_LABEL.findall(query.legend))) - SCRAPE_LABELS:
        if label and label not in labels:
            found.append(f"no metric of the query has the label {label}")
    if not names:
        found.append("the query names no gateway metric")
    return found


async def scrape(gateway: GatewayUnderTest) -> Series:
    async with gateway.session.get(gateway.base_url + "/metrics") as response:
        assert response.status == 200
        return parse_scrape(await response.text())


async def exercise(gateway: GatewayUnderTest, simulator: MarketSimulator) -> None:
    """Make the gateway show what a working day shows: a client, trades delivered,
    and a refusal (labelled series appear only once something was counted)."""
    client = await gateway.connect()
    await client.subscribe("AAPL")
    await simulator.wait_for(lambda: "AAPL" in simulator.subscribed_symbols(), timeout=10)
    await simulator.send_trades([trade("AAPL", 190.0)])
    await client.expect("price_update", skip=("status", "market", "quote", "error"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.session.ws_connect(gateway.ws_url, origin="https://evil.test")
    assert refused.value.status == 403


def is_cluster_only(query: Query) -> bool:
    return all(name.startswith("gateway_cluster_") for name, _ in _SELECTOR.findall(query.expr))


def test_the_dashboard_has_the_panels_operators_asked_for() -> None:
    queried = " ".join(query.expr for query in dashboard_queries())
    for metric in (
        "gateway_clients",
        "gateway_price_updates_sent_total",
        "gateway_upstream_trades_total",
        "gateway_handoff_seconds_bucket",
        "gateway_upstream_state",
        "gateway_upstream_reconnects_total",
        "gateway_rest_calls_total",
        "gateway_rest_budget_per_minute",
        "gateway_refusals_total",
        "gateway_slow_consumer_disconnects_total",
        "gateway_cluster_leader",
        "gateway_cluster_degraded",
    ):
        assert metric in queried, f"no panel shows {metric}"
    assert "histogram_quantile(0.99" in queried
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == provisioned_datasource()["uid"], panel["title"]


def test_the_query_check_catches_what_the_scrape_cannot_answer() -> None:
    series: Series = {"gateway_upstream_state": [{"state": "connected"}], "gateway_x": [{}]}
    assert problems_with(Query("p", 'gateway_upstream_state{state="connected"}', ""), series) == []
    assert problems_with(Query("p", 'gateway_upstream_state{state="gone"}', ""), series)
    assert problems_with(Query("p", "rate(gateway_missing_total[1m])", ""), series)
    assert problems_with(Query("p", "sum by (dialect) (gateway_x)", ""), series)
    assert problems_with(Query("p", "gateway_x", "{{reason}}"), series)
    assert problems_with(Query("p", "sum by (state) (gateway_upstream_state)", ""), series) == []


async def test_every_dashboard_query_is_answered_by_a_single_gateway() -> None:
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(simulator) as url:
        settings = settings_for(Market(simulator, url), rest_enabled=True)
        async with run_gateway(settings) as gateway:
            await exercise(gateway, simulator)
            series = await scrape(gateway)
    queries = [query for query in dashboard_queries() if not is_cluster_only(query)]
    assert len(queries) >= 20
    problems = {f"{q.panel}: {q.expr}": problems_with(q, series) for q in queries}
    assert not {query: found for query, found in problems.items() if found}


async def test_every_dashboard_query_is_answered_by_a_cluster_node(
    redis_server: RedisServer,
) -> None:
    simulator = MarketSimulator(rate=0, token=TEST_KEY)
    async with serve(simulator) as url:
        settings = settings_for(
            Market(simulator, url),
            rest_enabled=True,
            redis_url=redis_server.url,
            redis_prefix=f"test-{uuid.uuid4().hex[:8]}",
        )
        async with run_gateway(settings) as gateway:
            await exercise(gateway, simulator)
            series = await scrape(gateway)
    # Every panel, the bar store's too: a node with BAR_STORE_URL (here memory://,
    # settings_for's) reports its store on a cluster as in one process.
    queries = dashboard_queries()
    assert any(is_cluster_only(query) for query in queries)
    problems = {f"{q.panel}: {q.expr}": problems_with(q, series) for q in queries}
    assert not {query: found for query, found in problems.items() if found}


def provisioned_datasource() -> dict[str, Any]:
    path = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    [source] = yaml.safe_load(path.read_text())["datasources"]
    assert isinstance(source, dict)
    return source


def test_prometheus_scrapes_every_gateway_replica_and_grafana_is_provisioned() -> None:
    project = compose()
    services = project["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (PROJECT / source).exists(), f"{name} mounts {source}, which is missing"
    # DNS service discovery on the gateway service's name: one target per replica, on
    # the port nginx proxies to (not the proxy: it would sample one replica at random).
    [job] = PROMETHEUS["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    upstream = re.search(r"upstream gateways \{ server (\w+):(\d+); \}", nginx_config())
    assert upstream is not None
    assert discovery["names"] == [upstream[1]] and discovery["type"] == "A"
    assert discovery["port"] == int(upstream[2])
    assert services[upstream[1]]["deploy"]["replicas"] >= 2
    # Grafana: the datasource is the compose Prometheus, and the provider reads the
    # folder the dashboards are mounted on.
    assert provisioned_datasource()["url"] == "http://prometheus:9090"
    providers = MONITORING / "grafana" / "provisioning" / "dashboards" / "gateway.yml"
    [provider] = yaml.safe_load(providers.read_text())["providers"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("SKIPPED LOUDLY: no promtool (.ci/run installs Debian's prometheus)")
    done = subprocess.run(
        [promtool, "check", "config", str(MONITORING / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_validates_the_monitoring_profile() -> None:
    docker = shutil.which("docker")
    probe = None
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
    if probe is None or probe.returncode != 0:
        pytest.skip("SKIPPED LOUDLY: no `docker compose` on this machine to validate the file")
    assert docker is not None
    done = subprocess.run(
        [docker, "compose", "--profile", "monitoring", "config", "--quiet"],
        cwd=PROJECT,
        env={"FINNHUB_API_KEY": "unused", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
