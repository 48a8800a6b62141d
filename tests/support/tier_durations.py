"""The tiers' durations that docs/testing.md states stay true: when a whole tier ran
under CI (CI=true), the session's wall time is compared with the documented figure and
the run fails when it drifted past a generous factor either way.

docs/testing.md states each figure on a line of its own, e.g.
`<!-- tier: whole 290 s -->`, next to the prose that explains how it was measured.
`./dev test` exports DEV_TEST_STARTED (epoch seconds) so the whole command is timed,
lint and types included; a bare pytest run is timed from its own start."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
FIGURE = re.compile(r"<!-- tier: (?P<tier>[a-z]+) (?P<seconds>\d+) s -->")
FACTOR = 2.0  # generous: the machine is shared, a CI run is alone on it
MARKS = {"": "whole", "not slow": "fast"}


def documented_seconds(text: str) -> dict[str, int]:
    return {found["tier"]: int(found["seconds"]) for found in FIGURE.finditer(text)}


def tier_of(config: pytest.Config) -> str | None:
    """Which whole tier this run is, or None when it ran a selection of it."""
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return None
    if config.option.keyword or config.option.deselect or getattr(config.option, "lf", False):
        return None
    return MARKS.get(config.option.markexpr.strip())


def drift(tier: str, seconds: float, documented: dict[str, int]) -> str | None:
    """Why `seconds` is no longer the documented figure for `tier`, if it is not."""
    figure = documented.get(tier)
    if figure is None:
        return f"docs/testing.md states no duration for the {tier} tier (<!-- tier: ... -->)"
    if not figure / FACTOR <= seconds <= figure * FACTOR:
        return (
            f"the {tier} tier took {seconds:.0f} s; docs/testing.md says {figure} s "
            f"(more than {FACTOR:g}x off): measure it again and correct the figure"
        )
    return None


def started_at() -> float:
    started = os.environ.get("DEV_TEST_STARTED", "")
    return float(started) if started.isdigit() else time.time()


_STARTED = started_at()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if os.environ.get("CI") != "true" or hasattr(config, "workerinput"):
        return  # only CI's controller: a developer's run on a busy machine is not measured
    tier = tier_of(config)
    if tier is None or exitstatus != pytest.ExitCode.OK:
        return
    problem = drift(tier, time.time() - _STARTED, documented_seconds(DOC.read_text("utf-8")))
    if problem is not None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"tier duration: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
