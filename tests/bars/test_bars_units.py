"""The bar aggregator on its own: UTC boundaries, open/close by trade time, out-of-order
and late trades, empty intervals, revised finals, live-update throttling, bounds; and
histories: encoded once per series until it changes, shared, charged by their bytes."""

from __future__ import annotations

import sys
import time

import orjson
import pytest

from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.access.holds import SymbolHolds
from stock_gateway.bars.book import (
    BAR_MAX_AHEAD_SECONDS,
    MAX_OPEN_BARS,
    Bar,
    BarBook,
    BarEvent,
    Interval,
)
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.delivery.bar_history import SWEEP_AT, HistoryFrames, candles
from stock_gateway.delivery.encoders import WS
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.delivery.stats import FanoutStats
from stock_gateway.market_data.model import Trade
from tests.support.fakes import (
    DEFAULTS,
    FakeSocket,
    FakeWriter,
    make_book,
    make_capacity,
    outbox_limits,
)

MINUTE = 60_000
T = 1_764_000_000_000 - 1_764_000_000_000 % (5 * MINUTE)  # a whole 5-minute boundary


def trade(price: float, t: int, volume: float = 1.0, symbol: str = "AAPL") -> Trade:
    return Trade(symbol, price, volume, t)


def finals(events: list[BarEvent], interval: str = "1m") -> list[BarEvent]:
    return [e for e in events if e.final and e.interval == interval]


def test_bars_align_to_utc_boundaries_by_trade_time_and_close_on_the_clock() -> None:
    book = make_book(grace=0.5, max_ahead=60.0)  # these trades run up to a minute ahead of now
    now = T + 10
    assert book.add_trades([trade(10.0, T + 5), trade(12.0, T + 30_000)], now) == []
    assert book.add_trades([trade(9.0, T + 59_999), trade(11.0, T + MINUTE)], now) == []
    minute_bars = book.bars("AAPL", "1m")
    assert [bar.t for bar in minute_bars] == [T, T + MINUTE]
    first = minute_bars[0]
    assert (first.o, first.h, first.l, first.c, first.v, first.n) == (10.0, 12.0, 9.0, 9.0, 3.0, 3)
    # Not closed before its end plus the grace, whatever the trades say ...
    assert finals(book.due(T + MINUTE + 499)) == []
    # ... and closed then, without waiting for another trade.
    closed = finals(book.due(T + MINUTE + 500))
    assert [(e.bar["t"], e.bar["c"], e.revised) for e in closed] == [(T, 9.0, False)]
    assert [bar.t for bar in book.bars("AAPL", "5m")] == [T]  # still open


def test_open_and_close_follow_trade_time_not_arrival() -> None:
    book = make_book()
    book.add_trades([trade(20.0, T + 20_000), trade(30.0, T + 40_000)], T + 41_000)
    book.add_trades([trade(10.0, T + 1_000), trade(25.0, T + 30_000)], T + 42_000)
    bar = book.bars("AAPL", "1m")[0]
    assert (bar.o, bar.c, bar.h, bar.l, bar.n) == (10.0, 30.0, 30.0, 10.0, 4)


def test_a_late_trade_revises_its_closed_bar_and_an_empty_interval_gets_one() -> None:
    book = make_book(grace=0.5)
    book.add_trades([trade(10.0, T + 1_000)], T + 2_000)
    book.due(T + 3 * MINUTE)  # minute 0 closed; minutes 1 and 2 had no trades
    assert [bar.t for bar in book.bars("AAPL", "1m")] == [T]
    late = book.add_trades([trade(8.0, T + 2_000, volume=2)], T + 3 * MINUTE + 10)
    revised = finals(late)
    assert len(revised) == 1 and revised[0].revised
    assert revised[0].bar == {
        "t": T, "o": 10.0, "h": 10.0, "l": 8.0, "c": 8.0, "v": 3.0, "n": 2, "gap": False,
    }  # fmt: skip
    straggler = finals(book.add_trades([trade(9.0, T + MINUTE + 5)], T + 3 * MINUTE + 20))
    assert [(e.bar["t"], e.revised) for e in straggler] == [(T + MINUTE, True)]
    assert [bar.t for bar in book.bars("AAPL", "1m")] == [T, T + MINUTE]  # in order


def test_live_updates_at_most_once_per_second_and_only_when_changed() -> None:
    book = make_book(live_every=1.0)
    now = T + 100
    book.add_trades([trade(10.0, now)], now)
    live = [e for e in book.due(now) if not e.final and e.interval == "1s"]
    assert len(live) == 1
    for step in range(1, 10):  # nine more trades within the same second
        book.add_trades([trade(10.0 + step, now + step * 50)], now + step * 50)
        assert [e for e in book.due(now + step * 50) if not e.final and e.interval == "1m"] == []
    later = [e for e in book.due(now + 1_000) if not e.final and e.interval == "1m"]
    assert len(later) == 1 and later[0].bar["c"] == 19.0 and later[0].bar["n"] == 10
    assert [e for e in book.due(now + 2_500) if not e.final and e.interval == "1m"] == []


def test_history_is_bounded_and_forgotten_with_the_symbol() -> None:
    book = make_book(history=5)
    for second in range(20):
        t = T + second * 1_000
        book.add_trades([trade(10.0 + second, t)], t)
        book.due(t + 1_600)
    held = book.bars("AAPL", "1s")
    assert len(held) == 5 and [bar.c for bar in held] == [25.0, 26.0, 27.0, 28.0, 29.0]
    too_old = book.add_trades([trade(1.0, T)], T + 60_000)
    # Older than the history kept: not held, reported partial (that trade alone) for the
    # store to merge into the bar it keeps.
    [partial] = finals(too_old, "1s")
    assert partial.partial and partial.bar["n"] == 1 and partial.bar["t"] == T
    assert [bar.c for bar in book.bars("AAPL", "1s")] == [25.0, 26.0, 27.0, 28.0, 29.0]
    book.forget("AAPL")
    assert book.bars("AAPL", "1s") == [] and book.symbols == set()


def test_fractional_volumes_sum_exactly_enough() -> None:
    book = make_book()
    for _ in range(10):
        book.add_trades([trade(65_000.0, T + 1, volume=0.1, symbol="BINANCE:BTCUSDT")], T + 2)
    assert book.bars("BINANCE:BTCUSDT", "1m")[0].as_dict()["v"] == 1.0


def test_a_mirror_applies_live_and_final_bars() -> None:
    leader, mirror = make_book(), make_book()
    leader.add_trades([trade(10.0, T + 1)], T + 2)
    for event in leader.due(T + 2):
        mirror.apply(event)
    assert [bar.t for bar in mirror.bars("AAPL", "1m")] == [T]
    for event in leader.due(T + 5 * MINUTE + 1_000):
        mirror.apply(event)
    revised = leader.add_trades([trade(5.0, T + 2)], T + 5 * MINUTE + 2_000)
    for event in revised:
        mirror.apply(event)
    assert mirror.bars("AAPL", "1m")[0].as_dict() == leader.bars("AAPL", "1m")[0].as_dict()
    assert mirror.bars("AAPL", "1m")[0].l == 5.0


def test_candles_use_finnhubs_shape() -> None:
    assert candles([]) == {
        "c": [], "h": [], "l": [], "o": [], "t": [], "v": [], "gap": [], "s": "no_data",
    }  # fmt: skip
    shaped = candles([Bar.of(T, 10.0, 2.0, T)])
    assert shaped == {
        "c": [10.0], "h": [10.0], "l": [10.0], "o": [10.0], "t": [T // 1000], "v": [2.0],
        "gap": [False], "s": "ok",
    }  # fmt: skip


def test_grace_is_at_most_one_second() -> None:
    with pytest.raises(ValueError, match="grace"):
        make_book(grace=1.5)


@pytest.mark.slow  # measures the memory of thousands of series
def test_memory_per_symbol_is_bounded() -> None:
    """A full history in all three intervals stays within a fixed budget per symbol."""
    book = make_book(history=240)
    for second in range(240 * 300):  # 240 5-minute bars: every series full
        t = T + second * 1_000
        book.add_trades([trade(10.0, t)], t)
        if second % 60 == 0:
            book.due(t)
    book.due(T + 240 * 300 * 1_000 + MINUTE)
    per_bar = sys.getsizeof(Bar.of(T, 1.0, 1.0, T)) + 5 * sys.getsizeof(1.0)
    held = sum(len(book.bars("AAPL", i)) for i in ("1s", "1m", "5m"))
    assert held <= 3 * 241
    assert held * per_bar < 250_000  # bytes per symbol; BENCHMARKS.md "Bars" measures it


def test_loading_stored_bars_reopens_the_open_one_and_a_late_tick_closes_it() -> None:
    book = make_book(grace=0.5)
    stored = [Bar.of(T, 10.0, 1.0, T)]
    book.load("AAPL", "1m", stored, Bar.of(T + MINUTE, 11.0, 1.0, T + MINUTE))
    book.add_trades([trade(12.0, T + MINUTE + 31_000)], T + MINUTE + 31_000)
    open_bar = book.bars("AAPL", "1m")[-1]
    assert (open_bar.t, open_bar.n, open_bar.o, open_bar.c) == (T + MINUTE, 2, 11.0, 12.0)
    assert [e.bar["t"] for e in finals(book.due(T + 2 * MINUTE + 500))] == [T + MINUTE]
    # A bar left open by a leader that died long ago is closed, with its final, at once.
    later = make_book(grace=0.5)
    later.load("AAPL", "1m", [], Bar.of(T, 10.0, 1.0, T))
    assert [(e.bar["t"], e.final) for e in later.due(T + 10 * MINUTE) if e.interval == "1m"] == [
        (T, True)
    ]


def test_trades_stamped_ahead_of_the_clock_make_no_future_bars() -> None:
    book = make_book(grace=0.5)
    now = T + 10
    ahead = round(BAR_MAX_AHEAD_SECONDS * 1000)
    # One message of trades stamped up to an hour ahead, one second apart.
    future = [trade(10.0, now + ahead + 1 + second * 1000) for second in range(3600)]
    assert book.add_trades([*future, trade(11.0, now), trade(12.0, now + ahead)], now) == []
    for interval in ("1s", "1m", "5m"):
        assert all(bar.t <= now + ahead for bar in book.bars("AAPL", interval)), interval
    assert sum(bar.n for bar in book.bars("AAPL", "1m")) == 2
    assert len(book.bars("AAPL", "1s")) == 2


def test_open_bars_per_series_are_capped() -> None:
    book = make_book(grace=0.5, max_ahead=3600.0)  # a clock far behind its trades
    book.add_trades([trade(10.0, T + second * 1000) for second in range(3600)], T)
    assert len(book.bars("AAPL", "1s")) == MAX_OPEN_BARS
    assert len(book.bars("AAPL", "1m")) == MAX_OPEN_BARS


def test_a_volume_sum_that_would_overflow_stays_finite() -> None:
    book = make_book()
    book.add_trades([trade(10.0, T, volume=1e308), trade(10.0, T + 1, volume=1e308)], T)
    bar = book.bars("AAPL", "1m")[0]
    assert bar.v == sys.float_info.max and bar.n == 2
    assert Bar.from_dict(bar.as_dict()).v == sys.float_info.max  # what is stored, reads back


@pytest.mark.parametrize(
    "change",
    [
        {"v": None},  # what an infinite volume became in JSON
        {"o": float("nan")},
        {"h": float("inf")},
        {"l": 12.0},  # low above the open
        {"h": 9.0},  # high below the close
        {"l": 0},
        {"v": -1},
        {"t": 1.5},
        {"n": True},
        {"n": 0},
        {"c": "10"},
    ],
)
def test_a_malformed_bar_is_refused_by_from_dict(change: dict[str, object]) -> None:
    good = Bar.of(T, 10.0, 1.0, T)
    good.add(11.0, 2.0, T + 1)
    assert Bar.from_dict(good.as_dict()) == Bar(T, 10.0, 11.0, 10.0, 11.0, 3.0, 2, T, T)
    with pytest.raises(ValueError):
        Bar.from_dict({**good.as_dict(), **change})
    incomplete = good.as_dict()
    del incomplete["c"]
    with pytest.raises(KeyError):
        Bar.from_dict(incomplete)


def _encoded_the_old_way(book: BarBook, symbol: str, interval: Interval) -> bytes:
    bars = [bar.as_dict() for bar in book.bars(symbol, interval)]
    return orjson.dumps({"type": "bars", "symbol": symbol, "interval": interval, "bars": bars})


def test_a_history_is_encoded_once_and_kept_until_its_series_changes() -> None:
    now = T + 5 * MINUTE
    book = make_book()
    book.add_trades([trade(100.0 + i, T + i * 1_000) for i in range(200)], now)  # closed
    book.add_trades([trade(150.0, now - 100)], now)  # and the open bar
    histories = HistoryFrames(book)
    first = histories.frame("AAPL", "1s")
    assert first.payload == _encoded_the_old_way(book, "AAPL", "1s")  # byte for byte
    assert histories.encoded_bars == 201
    assert histories.frame("AAPL", "1s") is first  # asked again: not encoded again
    # A trade in the open bar: a new history, the closed bars' encoding kept.
    book.add_trades([trade(151.0, now - 50)], now)
    second = histories.frame("AAPL", "1s")
    assert second.payload == _encoded_the_old_way(book, "AAPL", "1s") != first.payload
    assert histories.encoded_bars == 202
    # A bar closes, and a late trade revises a closed one: each is a new history.
    book.due(now + 2_000)
    assert histories.frame("AAPL", "1s").payload == _encoded_the_old_way(book, "AAPL", "1s")
    book.add_trades([trade(1.0, T + 3_000)], now + 2_000)
    assert histories.frame("AAPL", "1s").payload == _encoded_the_old_way(book, "AAPL", "1s")
    assert b'"l":1.0' in histories.frame("AAPL", "1s").payload
    # Forgotten: an empty history; entries of forgotten series are swept.
    book.forget("AAPL")
    assert orjson.loads(histories.frame("AAPL", "1s").payload)["bars"] == []
    for index in range(3 * SWEEP_AT):
        symbol = f"S{index}"
        book.add_trades([trade(1.0, now - 100, symbol=symbol)], now)
        histories.frame(symbol, "1s")
        book.forget(symbol)
    assert len(histories) <= SWEEP_AT


def test_a_history_keeps_time_order_when_an_open_bar_is_older_than_a_closed_one() -> None:
    book = make_book()
    book.load("AAPL", "1m", [Bar.of(T + MINUTE, 2.0, 1.0, T + MINUTE)], Bar.of(T, 1.0, 1.0, T))
    payload = HistoryFrames(book).frame("AAPL", "1m").payload
    assert payload == _encoded_the_old_way(book, "AAPL", "1m")
    assert [bar["t"] for bar in orjson.loads(payload)["bars"]] == [T, T + MINUTE]


async def test_clients_of_one_series_share_its_history_and_a_resubscribe_sends_none() -> None:
    now = int(time.time() * 1000)
    book = make_book()
    book.add_trades([trade(100.0 + i, now - 300_000 + i * 1_000) for i in range(240)], now)
    capacity = make_capacity()
    bars = BarDelivery(
        book, SymbolHolds(capacity, max_symbols_per_client=50), history=DEFAULTS.bar_history
    )
    writers = [FakeWriter(), FakeWriter()]
    clients = [
        ClientConnection(
            FakeSocket(),
            FanoutStats(),
            direct=writer,
            limits=outbox_limits(frames=8),
            encoder=WS,
        )
        for writer in writers
    ]
    for client in clients:
        await bars.subscribe(client, ["AAPL"], "1s")
    histories = [
        [payload for payload in writer.payloads() if payload.startswith(b'{"type":"bars"')]
        for writer in writers
    ]
    assert histories[0] == histories[1] == [_encoded_the_old_way(book, "AAPL", "1s")]
    assert bars.histories.encoded_bars == 240  # once, for both
    # Asked again for a series it follows: the confirmation, not the history again.
    before = len(writers[0].payloads())
    await bars.subscribe(clients[0], ["AAPL"], "1s")
    (again,) = writers[0].messages()[before:]
    assert again == {
        "type": "subscription", "status": "subscribed", "symbols": ["AAPL"], "interval": "1s"
    }  # fmt: skip
    # Its bytes charged to the client and its address: past either, refused by name.
    budget = HistoryBudget(per_client=len(histories[0][0]) + 200, per_address=10**9)
    bars.budget = budget
    bars.unsubscribe(clients[0], ["AAPL"], "1s")
    await bars.subscribe(clients[0], ["AAPL"], "1s")  # within the client's minute
    bars.unsubscribe(clients[0], ["AAPL"], "1s")
    before = len(writers[0].payloads())
    await bars.subscribe(clients[0], ["AAPL"], "1s")
    refused, *rest = writers[0].messages()[before:]
    assert refused["code"] == "rate_limited" and refused["symbols"] == ["AAPL"]
    assert "bytes a minute per client" in refused["message"] and rest == []
    assert "AAPL" not in clients[0].bar_intervals and budget.refused == 1
    for client in clients:
        await client.stop()
