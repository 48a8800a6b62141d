"""The shipped docker-compose.yml (no Docker engine here: its text is checked): behind
its nginx, per-address limits must see each client's own address. So every gateway
service trusts X-Forwarded-For from the proxy's address alone, and every location nginx
proxies sets it. (That the gateway then counts forwarded clients apart, and ignores the
header from anyone else, is tests/test_abuse_addresses.py, against the real server.)"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import yaml

from tests.helpers import PROJECT

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    return loaded


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
    config = compose()["configs"]["nginx"]["content"]
    locations = re.findall(r"location\s+(\S+)\s*\{([^{}]*)\}", config)
    assert len(locations) == config.count("location "), "a location block was not parsed"
    for path, body in locations:
        if "proxy_pass" not in body:
            continue
        for header in FORWARDING_HEADERS:
            assert re.search(rf"proxy_set_header\s+{header}\s", body), (path, header)
