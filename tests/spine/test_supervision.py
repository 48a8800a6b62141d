"""Core tasks are supervised: a crash is logged with its traceback, /health answers 503
"degraded" naming the part while it is down, and the part is restarted by itself; a
part that crash-loops stays named between its crashes until it has run long enough."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import pytest

from hub import UpdateBatch
from stock_gateway import wiring
from stock_gateway.runtime.backoff import Backoff
from stock_gateway.runtime.supervisor import CRASH_LOOP_AFTER, Restarts, Supervisor
from tests.support.helpers import (
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)


async def health_response(gateway: GatewayUnderTest) -> tuple[int, dict[str, Any]]:
    async with gateway.session.get(gateway.base_url + "/health") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


@pytest.mark.slow  # a restart's backoff
async def test_a_crashed_broadcaster_degrades_health_then_is_restarted(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        running = gateway.gateway.running
        running.supervisor.initial_delay = 1.0  # down for 0.5-1 s: long enough to observe
        # The injected fault: a batch the broadcaster cannot read makes it crash.
        await running.hub.publish(cast(UpdateBatch, object()))
        seen: list[tuple[int, dict[str, Any]]] = []

        async def degraded() -> bool:
            seen.append(await health_response(gateway))
            return seen[-1][0] == 503

        await poll_until(degraded)
        body = seen[-1][1]
        assert body["status"] == "degraded"
        assert body["down"] == {"broadcaster": "AttributeError"}
        async with gateway.session.get(gateway.base_url + "/metrics") as response:
            assert "gateway_core_tasks_down 1.0" in await response.text()

        async def recovered() -> bool:
            status, body = await health_response(gateway)
            return status == 200 and body["status"] == "ok" and "down" not in body

        await poll_until(recovered)
        assert running.supervisor.restarts["broadcaster"] == 1
        await market.simulator.send_trades([trade("AAPL", 5.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 5.0
    crash = [r for r in caplog.records if "core task crashed part=broadcaster" in r.getMessage()]
    assert len(crash) == 1 and crash[0].exc_info is not None  # logged with its traceback


async def test_a_part_that_returns_is_restarted_and_exit_cancels_every_part() -> None:
    runs = 0
    forever = asyncio.Event()
    cancelled = asyncio.Event()

    async def returns_at_once() -> None:
        nonlocal runs
        runs += 1

    async def runs_until_cancelled() -> None:
        try:
            await forever.wait()
        finally:
            cancelled.set()

    async with Supervisor(initial_delay=0.001, max_delay=0.002) as supervisor:
        supervisor.start("flaky", returns_at_once)
        supervisor.start("steady", runs_until_cancelled)
        with pytest.raises(ValueError, match="already running"):
            supervisor.start("steady", runs_until_cancelled)
        async with asyncio.timeout(5):
            while runs < 3:  # noqa: ASYNC110 - each restart is a fresh call, nothing to await
                await asyncio.sleep(0.001)
        assert supervisor.restarts["steady"] == 0
    assert cancelled.is_set()


async def test_a_crash_looping_part_stays_down_while_it_runs_between_crashes(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restarts after 5-10 ms, doubling: the wiring's supervisor is made with that
    # delay (each part's backoff is fixed when the part starts, so setting it later
    # would not reach the broadcaster's).
    monkeypatch.setattr(wiring, "Supervisor", functools.partial(Supervisor, initial_delay=0.01))
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        supervisor = gateway.gateway.running.supervisor
        for crash in range(1, CRASH_LOOP_AFTER + 1):
            await gateway.gateway.running.hub.publish(cast(UpdateBatch, object()))

            async def restarted(count: int = crash) -> bool:
                return supervisor.restarts["broadcaster"] == count

            await poll_until(restarted)
        # Running again (it delivers), yet it crashed three times in a row: not healthy.
        await market.simulator.send_trades([trade("AAPL", 6.0)])
        assert (await client.expect("price_update"))["data"]["price"] == 6.0
        status, body = await health_response(gateway)
        assert (status, body["status"]) == (503, "degraded")
        assert body["down"] == {"broadcaster": "AttributeError"}


def test_restarts_count_crashes_in_a_row_until_a_healthy_run() -> None:
    now = [0.0]
    restarts = Restarts(Backoff(1.0, 60.0, floor=0.5), healthy_after=30.0, clock=lambda: now[0])
    for crash in range(1, CRASH_LOOP_AFTER + 1):
        restarts.started()
        now[0] += 1.0
        restarts.crashed("ValueError")
        assert restarts.in_a_row == crash
        assert restarts.looping is (crash == CRASH_LOOP_AFTER)
    assert restarts.reason == "ValueError"
    # Doubling per crash in a row, jittered between half and all of it, capped.
    assert 2.0 <= restarts.delay() <= 4.0
    assert 1.5 <= Backoff(1.0, 3.0, floor=0.5).delay_after(restarts.in_a_row) <= 3.0
    restarts.started()
    now[0] += 29.0
    assert restarts.looping  # running, but not yet for long enough
    now[0] += 1.0
    assert not restarts.looping
    restarts.crashed("KeyError")  # after a healthy run: the first of a new row
    assert restarts.in_a_row == 1 and not restarts.looping
    assert 0.5 <= restarts.delay() <= 1.0


async def test_watched_parts_count_as_down() -> None:
    failing = {"cluster.relay": "TypeError"}
    async with Supervisor(watched=[lambda: dict(failing)]) as supervisor:
        assert supervisor.down == {"cluster.relay": "TypeError"}
        failing.clear()
        assert supervisor.down == {}
