"""Pure logic behind the limits: the upstream capacity (fair shares, linger, rejections,
allow-list), admission per address, the token bucket, and defensive reading of
Finnhub's frames."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stock_gateway.access.admission import Admission, Admitted
from stock_gateway.access.capacity import UpstreamCapacity
from stock_gateway.access.credentials import address_key
from stock_gateway.access.entitlements import SymbolPatterns
from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.access.refusal import Refusal
from stock_gateway.finnhub.wire import redact
from stock_gateway.market_data.model import Quote, Trade
from stock_gateway.market_data.quotes import QuoteUnavailable
from stock_gateway.market_data.trade_wire import decode, newest_per_symbol, parse_trades
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.token_bucket import TokenBucket
from stock_gateway.settings import Settings
from tests.support.fakes import make_budget, make_capacity, make_quotes

NOW = 1_800_000_000.0


def capacity(**options: Any) -> UpstreamCapacity:
    return make_capacity(**options)


async def test_a_share_charges_each_holder_of_a_symbol_its_fraction() -> None:
    table = capacity(max_per_owner=2)
    table.join("A", "alice")
    table.join("B", "alice")
    refusal = table.refusal("C", "alice")
    assert refusal is not None and refusal.code == "symbol_quota"
    assert "counting 1/n" in refusal.reason
    assert table.refusal("C", "bob") is None  # an owner's charge is its own
    table.join("B", "bob")  # shared now: half of it each
    assert table.charge("alice") == 1.5 and table.charge("bob") == 0.5
    assert table.refusal("C", "alice") is not None  # a whole new symbol: 2.5 > 2
    assert table.refusal("A", "alice") is None  # a second client of alice: already paid
    table.join("A", "bob")  # bob's 1.0 and alice's 1.0 now
    assert table.refusal("C", "alice") is None
    table.join("B", "carol")
    assert table.charge("bob") == pytest.approx(0.5 + 1 / 3)
    table.leave("B", "alice")
    assert table.charge("alice") == 0.5 and table.charge("bob") == 1.0
    table.join("A", "bob")  # a second client of the same owner changes nothing
    table.leave("A", "bob")
    assert table.charge("bob") == 1.0 and table.charge("carol") == 0.5
    table.leave("A", "alice")  # bob alone with A again: charged the whole of it
    assert table.charge("bob") == 1.5 and "A" in table.interest


async def test_two_owners_subscribing_the_same_symbols_in_turn_get_two_shares() -> None:
    table = capacity(max_per_owner=10)
    symbols = [f"Z{index}" for index in range(50)]
    for _round in range(10):  # each takes, in chunks of 10, all it is given
        for owner in ("alice", "bob"):
            for start in range(0, 50, 10):
                for symbol in symbols[start : start + 10]:
                    if table.refusal(symbol, owner) is None:
                        table.join(symbol, owner)
    assert 18 <= len(table.interest) <= 20  # their two shares (less a half each), no more
    assert max(table.charge("alice"), table.charge("bob")) < 10.000001
    assert table.refusal("NEW", "carol") is None  # everyone else still has room


async def test_a_popular_symbol_costs_each_holder_little() -> None:
    table = capacity(max_per_owner=1)
    for index in range(99):
        table.join("AAPL", f"owner{index}")
    table.join("X", "late")
    refusal = table.refusal("AAPL", "late")  # 1 + 1/100 > 1
    assert refusal is not None and refusal.code == "symbol_quota"
    table.leave("X", "late")
    assert table.refusal("AAPL", "late") is None
    table.join("AAPL", "late")
    assert table.charge("late") == pytest.approx(0.01)


async def test_a_share_filled_exactly_in_fractions_is_not_refused_by_rounding() -> None:
    table = capacity(max_per_owner=1)
    for symbol in ("A", "B", "C"):
        table.join(symbol, "other")
    for symbol in ("A", "B", "C"):  # thirds do not add up to 1 in floating point
        table.join(symbol, "x1")
        table.join(symbol, "x2")
    assert table.charge("other") == pytest.approx(1)
    assert table.refusal("D", "other") is not None
    for symbol in ("A", "B", "C"):
        table.leave(symbol, "x2")
    assert table.charge("x1") == pytest.approx(1.5)  # over: others left, a leave is free
    assert table.refusal("D", "x1") is not None and table.refusal("D", "x2") is None


async def test_no_symbol_is_refused_for_capacity_and_lingering_ones_have_no_demand() -> None:
    # Past MAX_UPSTREAM_SYMBOLS, symbols were refused (`symbol_limit`); now every symbol is
    # served and the feed planner decides which ride the socket, by demand.
    table = capacity(max_per_owner=10, linger=30)
    for symbol in ("A", "B", "C"):
        assert table.refusal(symbol, "y") is None
        table.join(symbol, "y")
    table.join("B", "z")
    table.leave("A", "y")  # lingers: still wanted, with no demand
    assert table.lingering == ["A"] and table.interest.symbols == {"A", "B", "C"}
    assert table.demand() == {"A": 0.0, "B": 2.0, "C": 1.0}
    table.close()


async def test_linger_releases_later_and_a_return_cancels_it() -> None:
    released: list[str] = []
    table = capacity(linger=0.05)
    table.on_release = released.append
    table.join("A", "x")
    table.leave("A", "x")
    table.join("A", "y")  # back within the linger: nothing released
    table.leave("A", "y")
    assert "A" in table.interest and released == []
    await asyncio.sleep(0.1)  # past the linger deadline: a timer, nothing to await
    assert "A" not in table.interest and released == ["A"]


async def test_a_rejected_symbol_is_refused_for_a_while_and_never_lingers() -> None:
    table = capacity(linger=30, reject_for=0.05)
    table.join("BAD", "x")
    table.rejected("BAD")
    table.leave("BAD", "x")
    assert "BAD" not in table.interest and table.lingering == []
    refusal = table.refusal("BAD", "y")
    assert refusal is not None and refusal.code == "upstream_error"
    await asyncio.sleep(0.06)
    assert table.refusal("BAD", "y") is None


def test_allow_list_patterns_and_file(tmp_path: Path) -> None:
    allowed = SymbolPatterns.from_setting("aapl, BINANCE:*, OANDA:EUR_???")
    assert allowed is not None
    assert "AAPL" in allowed and "BINANCE:ETHUSDT" in allowed and "OANDA:EUR_USD" in allowed
    assert "MSFT" not in allowed and "OANDA:GBP_USD" not in allowed
    listing = tmp_path / "symbols.txt"
    listing.write_text("# our universe\nMSFT\nNVDA  # and this\n\n")
    from_file = SymbolPatterns.from_setting(f"@{listing}")
    assert from_file is not None and len(from_file) == 2 and "NVDA" in from_file
    assert SymbolPatterns.from_setting("  ") is None


async def test_admission_per_address_connections_and_handshake_rate() -> None:
    settings = Settings(
        max_connections_per_address=2, address_handshake_rate=1, address_handshake_burst=3
    )
    admission = Admission(settings)

    async def admit(address: str, now: float = NOW) -> Admitted | Refusal:
        return await admission.admit("connection", address=address, now=now)

    first, second = await admit("10.0.0.1"), await admit("10.0.0.1")
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    with admission.open(first), admission.open(second):  # type: ignore[union-attr]
        refusal = await admit("10.0.0.1")
        assert isinstance(refusal, Refusal) and refusal.status == 429 and refusal.retry_after
        assert isinstance(await admit("10.0.0.2"), Admitted)
        # Admitted before the others opened: counted again when it opens, and refused.
        assert isinstance(admission.open(Admitted("10.0.0.1")), Refusal)
    assert admission.connections_from("10.0.0.1") == 0
    verdicts = [await admit("10.0.0.3") for _ in range(4)]
    assert all(isinstance(verdict, Admitted) for verdict in verdicts[:3])
    assert isinstance(verdicts[3], Refusal) and verdicts[3].retry_after == 1
    assert isinstance(await admit("10.0.0.3", NOW + 1.0), Admitted)
    assert admission.refused == {"address_connections": 2, "address_handshakes": 1}


async def test_admission_origin_and_token_come_first() -> None:
    admission = Admission(Settings(frontend_url=("https://app.example",), gateway_token="t"))

    async def status(origin: str, token: str) -> int:
        answer = await admission.admit("connection", address="a", origin=origin, token=token)
        return answer.status if isinstance(answer, Refusal) else 0

    assert await status("https://evil.example", "t") == 403
    assert await status("https://app.example", "x") == 401
    assert await status("https://app.example", "t") == 0


async def test_admission_refuses_past_max_clients_with_1013() -> None:
    admission = Admission(Settings(max_clients=1))
    first = await admission.admit("connection", address="10.0.0.1")
    assert isinstance(first, Admitted)
    with admission.open(first):  # type: ignore[union-attr]
        full = await admission.admit("connection", address="10.0.0.2")
        assert isinstance(full, Refusal) and (full.status, full.close_code) == (503, 1013)
    assert isinstance(await admission.admit("connection", address="10.0.0.2"), Admitted)


def test_token_bucket_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0)
    assert bucket.take(0) == 0 and bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.limited_for(0.25) == 0.25
    assert bucket.take(0.5) == 0
    assert not bucket.full(0.5) and bucket.full(2.0)


def test_a_token_bucket_of_bytes_charges_each_take_its_cost() -> None:
    bucket = TokenBucket(rate=10, burst=100, now=0)
    assert bucket.take(0, cost=60) == 0
    assert bucket.take(0, cost=60) == pytest.approx(2.0)  # 40 left, 20 short: nothing spent
    assert bucket.wait(2.0, cost=60) == 0 and bucket.take(2.0, cost=60) == 0
    # More than the burst: allowed from a full bucket only, which it leaves in debt.
    assert bucket.wait(2.0, cost=500) == pytest.approx(10.0)  # empty: 100 to wait for
    assert bucket.take(12.0, cost=500) == 0 and bucket.tokens == pytest.approx(-400)
    assert bucket.take(12.0) == pytest.approx(40.1)
    bucket.spend(12.0, -1000)  # given back, up to the burst
    assert bucket.full(12.0)


def test_history_bytes_are_charged_to_the_client_and_to_its_address() -> None:
    budget = HistoryBudget(per_client=1000, per_address=1500)
    assert budget.charge("one", "10.0.0.1", 800, now=0) is None
    own = budget.charge("one", "10.0.0.1", 800, now=0)
    assert isinstance(own, Refusal) and own.code == "rate_limited"
    assert own.reason.startswith("bar history is limited to 1000 bytes a minute per client")
    shared = budget.charge("two", "10.0.0.1", 800, now=0)  # the address has 700 left
    assert isinstance(shared, Refusal) and "1500 bytes a minute per address" in shared.reason
    assert shared.retry_after == 4  # 100 bytes short at 25 a second
    assert budget.charge("three", "10.0.0.2", 800, now=0) is None  # another address
    assert budget.charge("two", "10.0.0.1", 800, now=4) is None  # refilled meanwhile
    assert budget.refused == 2
    # One history larger than a whole allowance is not refused for ever, only made rare.
    assert budget.charge("four", "10.0.0.3", 5000, now=0) is None
    assert budget.charge("four", "10.0.0.3", 10, now=60) is not None  # still in debt
    budget.owe("four", "10.0.0.3", -5000, now=60)  # given back (sent less than charged)
    assert budget.charge("four", "10.0.0.3", 10, now=60) is None


def test_one_message_keeps_the_newest_trades_per_symbol_in_order() -> None:
    trades = [Trade("A", float(i), 1, i) for i in range(5)] + [Trade("B", 9.0, 1, 9)]
    trades.insert(2, Trade("B", 8.0, 1, 8))
    kept, dropped = newest_per_symbol(trades, 2)
    assert [(t.symbol, t.price) for t in kept] == [("B", 8.0), ("A", 3.0), ("A", 4.0), ("B", 9.0)]
    assert dropped == 3
    assert newest_per_symbol(trades, 10) == (trades, 0)


def test_nan_costs_one_trade_and_absurd_times_are_skipped() -> None:
    frame = decode(
        '{"type":"trade","data":[{"s":"A","p":NaN,"t":1800000000000,"v":1},'
        '{"s":"A","p":2.0,"t":1800000000000,"v":1},{"s":"A","p":2.0,"t":-1,"v":1},'
        '{"s":"A","p":2.0,"t":18446744073709551,"v":1},{"s":"A","p":2.0,"t":1800000000000,"v":Infinity}]}'
    )
    trades, skipped = parse_trades(frame["data"], now=NOW)
    assert trades == [Trade("A", 2.0, 1, 1_800_000_000_000)] and skipped == 4
    with pytest.raises(ValueError):
        decode("{nope")


def test_redact_is_case_blind_and_masks_token_parameters() -> None:
    assert redact("key SeKrIt-1 and sekrit-1", "sekrit-1") == "key *** and ***"
    assert redact("wss://x/?Token=abc&y=1", "") == "wss://x/?Token=***&y=1"


def test_ipv6_clients_are_counted_by_their_slash_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7" and address_key("-") == "-"


async def test_owners_with_no_symbol_are_forgotten() -> None:
    table = capacity()
    for index in range(1000):
        table.join("A", f"owner{index}")
        table.leave("A", f"owner{index}")
    table.join("B", "x")
    table.join("B", "y")
    table.leave("B", "x")
    assert table._held == {"y": {"B"}}


async def test_the_rest_window_allows_30_a_second_and_the_plan_a_minute() -> None:
    budget = make_budget(per_minute=100, per_second=30)
    budget._calls.extend([10.0 + index / 100 for index in range(30)])  # 30 within 0.3 s
    assert budget._wait(10.5) == pytest.approx(0.5)  # the oldest of the second expires at 11.0
    assert budget._wait(11.01) == 0
    budget = make_budget(per_minute=60)
    budget._calls.extend([float(index) for index in range(60)])  # one a second for a minute
    assert budget._wait(59.5) == pytest.approx(0.5)  # t=0 leaves the window at 60
    assert budget._wait(60.0) == pytest.approx(0.0)


class _SlowSource:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()

    async def quote(self, symbol: str, deadline: float) -> Quote | None:
        self.asked.append(symbol)
        await self.release.wait()
        return None


async def test_quote_requests_are_bounded_per_owner_and_in_all() -> None:
    source = _SlowSource()
    service = make_quotes(source, Allowances(2 / 60, 2), wait=5, max_queued=3)
    worker = asyncio.create_task(service.run())
    try:
        mine = [service.request(f"S{index}", "alice") for index in range(3)]
        assert not mine[0].done() and not mine[1].done()
        assert isinstance(mine[2].exception(), QuoteUnavailable)  # alice's share is 2
        assert not service.request("S0", "bob").done()  # joining a fetch in flight is free
        bob = service.request("B1", "bob")
        assert not bob.done()
        full = service.request("C1", "carol")  # 3 fetches waiting already
        assert isinstance(full.exception(), QuoteUnavailable)
        source.release.set()
        assert await mine[0] is None and await bob is None
    finally:
        worker.cancel()
        await asyncio.wait([worker])
