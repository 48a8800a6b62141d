"""What every attack test (tests/abuse/test_abuse_*.py) asserts the gateway kept intact."""

from __future__ import annotations

from bench.abuse import Measure


def assert_absorbed(measure: Measure, *, rss_growth_mib: float = 30.0) -> None:
    """What every attack must leave intact: the bystander, /health, memory."""
    assert measure.ratio >= 0.7, measure
    assert measure.health_max_ms < 1000 and measure.health_failures == 0, measure
    assert measure.rss_peak_mib - measure.rss_before_mib < rss_growth_mib, measure
