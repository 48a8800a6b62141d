"""Pure logic: symbol rules, client message parsing, trade parsing, backoff, redaction."""

from __future__ import annotations

import math

import pytest

from stock_gateway.client_requests import ProtocolError, normalize_symbol, split_symbols
from stock_gateway.endpoints.ws_requests import parse_client_message
from stock_gateway.finnhub.wire import redact
from stock_gateway.market_data.model import NOT_SENT, Trade
from stock_gateway.market_data.trade_wire import MAX_TRADE_PRICE, MAX_TRADE_VOLUME, parse_trades
from stock_gateway.runtime.backoff import Backoff


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AAPL", "AAPL"),
        (" brk.b ", "BRK.B"),
        ("binance:btcusdt", "BINANCE:BTCUSDT"),
        ("OANDA:EUR_USD", "OANDA:EUR_USD"),
        ("IC MARKETS:1", "IC MARKETS:1"),
        ("^gspc", "^GSPC"),
        ("", None),
        ("   ", None),
        ("<script>", None),
        ("AAPL\n", "AAPL"),  # trimmed like any surrounding whitespace
        ("AA\nPL", None),
        ("A\u0000", None),
        ('A"B', None),
        ("A&B", None),
        (":AAPL", None),
        ("X" * 40, "X" * 40),
        ("X" * 41, None),
        ("ÄPFEL", None),
    ],
)
def test_symbol_pattern(raw: str, expected: str | None) -> None:
    assert normalize_symbol(raw) == expected


def test_split_symbols_dedupes_in_order_and_keeps_rejects_raw() -> None:
    assert split_symbols(("msft", "<b>", "MSFT", "aapl")) == (["MSFT", "AAPL"], ["<b>"])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "invalid_json"),
        ("", "invalid_json"),
        ("null", "invalid_message"),
        ('"subscribe"', "invalid_message"),
        ('{"action": 1}', "invalid_message"),
        ('{"action": "sell"}', "unknown_action"),
        ('{"action": "subscribe", "symbols": [null]}', "invalid_message"),
        ('{"action": "unsubscribe", "symbols": {}}', "invalid_message"),
    ],
)
def test_parse_client_message_errors(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_client_message(text)
    assert raised.value.code == code


def test_parse_client_message_accepts_the_seed_shapes() -> None:
    request = parse_client_message('{"action":"subscribe","symbols":["AAPL","NVDA"]}')
    assert request.action == "subscribe" and request.symbols == ("AAPL", "NVDA")
    assert parse_client_message('{"action":"ping"}').action == "ping"


def test_unknown_action_is_echoed_escaped_and_short() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_client_message('{"action": "<img src=x onerror=alert(1)>' + "x" * 100 + '"}')
    message = raised.value.message
    assert "x" * 41 not in message and "..." in message  # the echo is cut at 40 characters
    assert len(message) < 170  # the echo, plus the list of actions


def test_parse_trades_keeps_valid_and_counts_malformed() -> None:
    data = [
        {"s": "AAPL", "p": 150.25, "t": 1700000000000, "v": 100, "c": ["1"]},
        {"s": "BINANCE:BTCUSDT", "p": 65000, "t": 1700000000001, "v": 0.011467, "c": None},
        {"s": "MSFT", "p": 1.0, "t": 1700000000002, "v": 0},
        {"s": "BAD", "p": "150", "t": 1, "v": 1},
        {"s": "BAD", "p": True, "t": 1, "v": 1},
        {"s": "BAD", "p": math.nan, "t": 1, "v": 1},
        {"s": "BAD", "p": 1.0, "t": 1.5, "v": 1},
        {"p": 1.0, "t": 1, "v": 1},
        ["not", "a", "dict"],
        None,
    ]
    trades, malformed = parse_trades(data, now=1_700_000_000)
    assert trades == [
        Trade("AAPL", 150.25, 100, 1700000000000, ("1",)),
        Trade("BINANCE:BTCUSDT", 65000, 0.011467, 1700000000001, None),
        Trade("MSFT", 1.0, 0, 1700000000002, NOT_SENT),  # no `c`: it stays absent
    ]
    assert malformed == 7


def test_trade_conditions_are_kept_only_as_finnhub_sends_them() -> None:
    def conditions(value: object) -> object:
        item = {"s": "AAPL", "p": 1.0, "t": 1700000000000, "v": 1, "c": value}
        return parse_trades([item], now=1_700_000_000)[0][0].conditions

    assert conditions([]) == ()
    assert conditions(["1", "12"]) == ("1", "12")
    # Not what Finnhub sends: the trade is kept, its `c` is not (it would reach clients).
    assert conditions("<script>") is NOT_SENT
    assert conditions([1, 2]) is NOT_SENT
    assert conditions(["x" * 100]) is NOT_SENT
    assert conditions(["1"] * 1000) is NOT_SENT
    assert parse_trades({"s": "AAPL"}) == ([], 1)


def test_parse_trades_refuses_implausible_prices_and_volumes() -> None:
    at = 1700000000000
    data = [
        {"s": "AAPL", "p": 150.25, "t": at, "v": MAX_TRADE_VOLUME},
        {"s": "BRK.A", "p": MAX_TRADE_PRICE, "t": at, "v": 1},
        {"s": "AAPL", "p": 150.25, "t": at, "v": 1e308},  # finite, but two overflow a sum
        {"s": "AAPL", "p": 150.25, "t": at, "v": MAX_TRADE_VOLUME * 1.5},
        {"s": "AAPL", "p": 1e308, "t": at, "v": 1},
        {"s": "AAPL", "p": MAX_TRADE_PRICE * 1.5, "t": at, "v": 1},
    ]
    trades, skipped = parse_trades(data, now=at / 1000)
    assert [(t.symbol, t.price, t.volume) for t in trades] == [
        ("AAPL", 150.25, MAX_TRADE_VOLUME),
        ("BRK.A", MAX_TRADE_PRICE, 1),
    ]
    assert skipped == 4


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, rng=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_has_full_jitter() -> None:
    backoff = Backoff(1.0, 8.0)
    for _ in range(5):
        backoff.next_delay()
    samples = [backoff.next_delay() for _ in range(200)]
    assert all(0.0 <= sample <= 8.0 for sample in samples)
    assert min(samples) < 2.0 and max(samples) > 6.0


def test_redact_masks_the_key_and_any_token_parameter() -> None:
    text = "401, message='Invalid response status', url='wss://ws.finnhub.io/?token=sekrit123&x=1'"
    redacted = redact(text, "sekrit123")
    assert "sekrit123" not in redacted
    assert "token=***" in redacted
    assert redact("token=other-value", "") == "token=***"
