"""The deployment files the deploy, nginx and monitoring tests read."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.helpers import (
    PROJECT,
)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    return loaded


def nginx_config() -> str:
    """The nginx configuration the compose file gives its proxy (a file of the project)."""
    project = compose()
    [mounted] = project["services"]["proxy"]["configs"]
    assert mounted["target"] == "/etc/nginx/conf.d/default.conf"
    source = str(project["configs"][mounted["source"]]["file"])
    return (PROJECT / source).read_text()


def dockerfile_instruction(name: str) -> str:
    lines = (PROJECT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    matches = [line.split(None, 1)[1] for line in lines if line.split(None, 1)[:1] == [name]]
    assert len(matches) == 1, name
    return matches[0]
