"""docs/testing.md states each tier's duration in a form the drift check reads, and the
check tells a figure within its factor from one that drifted."""

from __future__ import annotations

from tests.support.tier_durations import DOC, FACTOR, documented_seconds, drift


def test_the_docs_state_both_tiers_durations() -> None:
    documented = documented_seconds(DOC.read_text("utf-8"))
    assert set(documented) == {"whole", "fast"}
    assert documented["fast"] < documented["whole"]


def test_a_duration_within_the_factor_passes_and_one_past_it_fails() -> None:
    documented = {"whole": 300}
    assert drift("whole", 300 * FACTOR - 1, documented) is None
    assert drift("whole", 300 / FACTOR + 1, documented) is None
    slower = drift("whole", 300 * FACTOR + 1, documented)
    assert slower is not None and "300 s" in slower
    assert drift("whole", 300 / FACTOR - 1, documented) is not None
    assert drift("fast", 10, documented) is not None  # no figure is a failure too
