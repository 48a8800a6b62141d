"""Long bar histories read over HTTP from many addresses cost the readers their
allowance before the gateway does the work, so a normal client on another address
keeps its stream and /health answers: against the real gateway on a store holding
10,000 bars."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.read_attacks import history_reads, rig_with_history
from tests.support.abuse import assert_absorbed

pytestmark = pytest.mark.slow


async def test_whole_histories_read_from_ten_addresses_leave_the_bystander_its_stream() -> None:
    async with rig_with_history() as rig:
        statuses: Counter[str] = Counter()
        # The reads are refused within the first second; 4 s of them keep the pressure
        # on long enough to judge the bystander's stream.
        measure, _ = await rig.measure(lambda: history_reads(rig, statuses, seconds=4), seconds=4)
        assert statuses["200"] > 0, (statuses, measure)
        assert statuses["429"] > 0 and statuses["429 without Retry-After"] == 0, statuses
        assert set(statuses) <= {"200", "429"}, statuses
        assert_absorbed(measure)
