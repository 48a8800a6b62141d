"""The shipped docker-compose.yml (no Docker engine here): it is valid by the Compose
Specification's own JSON schema, and every file it mounts exists. Behind its nginx
(deploy/nginx.conf), per-address limits must see each client's own address. So every
gateway service trusts X-Forwarded-For from the proxy's address alone, and every
location nginx proxies sets it. (That the gateway then counts forwarded clients apart,
and ignores the header from anyone else, is tests/abuse/test_abuse_addresses.py against the
real server, and tests/project/test_deploy_nginx.py through this nginx configuration.)"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
from typing import Any

import jsonschema

from tests.support.deploy_files import compose, nginx_config
from tests.support.helpers import PROJECT

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto")
# The Compose Specification's schema, vendored as published (compose-spec/compose-spec,
# schema/compose-spec.json at 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0):
# no network in the suite. `docker compose config` validates by the same schema.
COMPOSE_SCHEMA = PROJECT / "tests" / "compose-spec.json"
# A `location [modifier] path {` block without nested blocks.
_LOCATION = re.compile(r"location\s+(?:(?:=|\^~|~\*?)\s+)?(\S+)\s*\{([^{}]*)\}")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "NAME=value" form
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def proxy_address(project: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    networks = project["services"]["proxy"].get("networks", {})
    fixed = [str(n["ipv4_address"]) for n in networks.values() if "ipv4_address" in (n or {})]
    assert len(fixed) == 1, "the proxy needs one fixed address the gateways can trust"
    return ipaddress.ip_address(fixed[0])


def test_every_gateway_service_trusts_forwarded_addresses_from_the_proxy_alone() -> None:
    project = compose()
    gateways = {name: s for name, s in project["services"].items() if "build" in s}
    assert gateways, "no service runs the gateway image"
    proxy = proxy_address(project)
    for name, service in gateways.items():
        trusted = environment(service).get("FORWARDED_ALLOW_IPS", "")
        entries = [entry.strip() for entry in trusted.split(",") if entry.strip()]
        assert entries, f"{name}: no FORWARDED_ALLOW_IPS: everyone behind nginx is one address"
        assert "*" not in entries, f"{name}: FORWARDED_ALLOW_IPS=* believes any client"
        assert any(proxy in ipaddress.ip_network(entry) for entry in entries), (name, entries)
    # Other containers take addresses from the network's ip_range, never the proxy's.
    for pool in project["networks"]["backend"]["ipam"]["config"]:
        assert proxy in ipaddress.ip_network(pool["subnet"])
        assert proxy not in ipaddress.ip_network(pool["ip_range"])


def test_every_location_nginx_proxies_passes_the_client_address() -> None:
    config = nginx_config()
    locations = _LOCATION.findall(config)
    blocks = re.findall(r"^\s*location\s", config, flags=re.MULTILINE)
    assert len(locations) == len(blocks), "a location block was not parsed"
    for path, body in locations:
        if "proxy_pass" not in body:
            continue
        for header in FORWARDING_HEADERS:
            assert re.search(rf"proxy_set_header\s+{header}\s", body), (path, header)


def test_the_compose_file_is_valid_by_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    project = compose()
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(project)]
    assert not problems
    # The schema is strict where a typo would go unnoticed: an unknown service key, or a
    # config with neither a file nor content of the right type.
    mistyped = copy.deepcopy(project)
    mistyped["services"]["proxy"]["config"] = mistyped["services"]["proxy"].pop("configs")
    assert not validator.is_valid(mistyped)
    mistyped = copy.deepcopy(project)
    mistyped["configs"]["nginx"] = {"file": ["deploy/nginx.conf"]}
    assert not validator.is_valid(mistyped)


def test_every_file_the_compose_file_names_exists() -> None:
    project = compose()
    named = [str(config["file"]) for config in project.get("configs", {}).values()]
    for service in project["services"].values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount, not a named volume
                named.append(source)
        context = service.get("build")
        if context is not None:
            context = context if isinstance(context, str) else context.get("context", ".")
            named.append(f"{context}/Dockerfile")
    assert "./deploy/nginx.conf" in named
    missing = [source for source in named if not (PROJECT / source).exists()]
    assert not missing


def test_grafana_refuses_to_start_without_an_admin_password() -> None:
    """Grafana's entrypoint (compose escapes `$` as `$$`) run by sh, with Grafana's own
    start script stood in for by `echo`: no password, no Grafana."""
    grafana = compose()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    shell, flag, script = grafana["entrypoint"]
    assert (shell, flag) == ("sh", "-c") and script.endswith("exec /run.sh")
    runnable = script.replace("$$", "$").replace("exec /run.sh", "exec echo grafana started")
    sh = shutil.which("sh")
    assert sh is not None
    for password, started in (("", False), ("s3cret", True)):
        done = subprocess.run(
            [sh, "-c", runnable],
            env={"GF_SECURITY_ADMIN_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert (done.returncode == 0) is started, done
        assert ("grafana started" in done.stdout) is started
        assert ("set GRAFANA_ADMIN_PASSWORD" in done.stderr) is not started


def test_the_gateway_service_needs_a_key_or_demo_mode_not_a_key() -> None:
    """`DEMO=true docker compose up` needs no key: neither variable is required by
    Compose (a `:?` would stop it before any container starts), and the gateway itself
    refuses to start with neither (tests/spine/test_process.py). That demo replicas work on a
    cluster is tests/project/test_deploy_nginx.py."""
    for service in compose()["services"].values():
        if "build" in service:
            env = environment(service)
            assert env["FINNHUB_API_KEY"] == "${FINNHUB_API_KEY:-}"
            assert env["DEMO"] == "${DEMO:-false}"
            assert env["REDIS_URL"].startswith("redis://")


def test_the_deploy_page_shows_the_whole_nginx_configuration() -> None:
    page = (PROJECT / "docs" / "deploy.md").read_text(encoding="utf-8")
    shown = re.findall(r"^```nginx\n(.*?)^```", page, flags=re.MULTILINE | re.DOTALL)
    assert shown == [nginx_config()], "docs/deploy.md's nginx block is not deploy/nginx.conf"
