"""One address cannot grow the bar store without bound by rotating through new symbols:
it may make the gateway start carrying at most NEW_SYMBOLS_PER_ADDRESS symbols an hour
(each is recorded for months), while symbols already carried stay free and other
addresses keep their own allowance."""

from __future__ import annotations

from tests.support.helpers import Client, Market, run_gateway, settings_for

NEW_AN_HOUR = 60  # the default


async def rotate(client: Client, symbols: list[str]) -> dict[str, object]:
    """Subscribe to `symbols` and leave them again: the answer (a `subscription` or the
    refusal's `error`)."""
    await client.send({"action": "subscribe", "symbols": symbols})
    answer = await client.receive()
    while answer["type"] in ("status", "market"):
        answer = await client.receive()
    if answer["type"] == "subscription":
        await client.unsubscribe(*symbols)
    return answer


async def test_one_address_rotating_through_new_symbols_is_refused_past_its_hourly_bound(
    market: Market,
) -> None:
    settings = settings_for(market, max_symbols_per_address=10, new_symbols_per_address=NEW_AN_HOUR)
    async with run_gateway(settings) as gateway:
        rotator = await gateway.connect(local="127.0.0.3")
        batches = [[f"R{batch}X{index}" for index in range(10)] for batch in range(8)]
        answers = [await rotate(rotator, batch) for batch in batches]
        kinds = [answer["type"] for answer in answers]
        assert kinds == ["subscription"] * (NEW_AN_HOUR // 10) + ["error"] * 2, answers
        refused = answers[-1]
        assert refused["code"] == "symbol_quota" and refused["symbols"] == batches[-1]
        assert f"at most {NEW_AN_HOUR} new symbols an hour" in str(refused["message"])
        carried = set((await gateway.health())["symbols"])
        assert carried.isdisjoint(batches[-1] + batches[-2])  # never carried, never recorded

        # Another address has its own allowance, and sharing a carried symbol is free.
        other = await gateway.connect(local="127.0.0.4")
        wanted = [f"OTHER{index}" for index in range(10)]
        assert (await other.subscribe(*wanted))["symbols"] == wanted
        assert (await rotator.subscribe("OTHER0"))["symbols"] == ["OTHER0"]
