"""The npm packages the TypeScript, React and ESLint tests use (package.json, installed by
`npm ci`, which .ci/run does): where they are, and a loud skip when they are not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import PROJECT

NODE_MODULES = PROJECT / "node_modules"
TSC = NODE_MODULES / ".bin" / "tsc"
ESBUILD = NODE_MODULES / ".bin" / "esbuild"
ESLINT = NODE_MODULES / ".bin" / "eslint"


def require(tool: Path) -> Path:
    if not tool.exists():
        pytest.skip(f"SKIPPED LOUDLY: no {tool.relative_to(PROJECT)} (run `npm ci`; .ci/run does)")
    return tool


def run(*command: str | Path, cwd: Path = PROJECT) -> str:
    """Run a node tool to its end; fail the test with its output unless it exits 0."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{Path(command[0]).name} failed:\n{output}"
    return output
