"""Trade messages on the wire, in Finnhub's shape (`{"type":"trade","data":[...]}`),
which the gateway speaks in three places: read from Finnhub's socket (finnhub_feed.py),
written to the clients of Finnhub's dialect (delivery/finnhub_encoder.py), and between a
cluster's processes (cluster/publish.py, cluster/redis_relay.py). Provider-neutral: a
provider with another format parses its own and hands the gateway `Trade`s.

Whatever sends them can send malformed JSON, `NaN`, absurd values or its own error
text. Every trade is checked alone: a bad one is skipped and counted, and the rest of
its frame is still delivered. Pure functions: no I/O.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import orjson

from stock_gateway.market_data.model import NOT_SENT, Conditions, Trade

# Plausible trades only (README "Security and limits"): no listed instrument trades
# near these, and a volume near float64's limit makes every sum of volumes infinite,
# which JSON cannot carry (a bar stored as `null` stopped a whole cluster).
MAX_TRADE_PRICE = 1e9
MAX_TRADE_VOLUME = 1e12


class UndecodableMessage(ValueError):
    """The frame is not a JSON object or array, even leniently."""


def decode(text: str) -> Any:
    """A frame's JSON. orjson first (fast, strict); on failure the standard library,
    which also reads the `NaN` and `Infinity` that orjson refuses, so one bad number
    costs one trade rather than the whole frame."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UndecodableMessage("not JSON") from None


def parse_trades(
    data: Any,
    *,
    max_age: float = 7 * 86400.0,
    max_ahead: float = 3600.0,
    now: float | None = None,
) -> tuple[list[Trade], int]:
    """Valid trades from a trade frame's `data`, and how many entries were skipped.

    Valid: a string symbol, a positive price up to MAX_TRADE_PRICE, a non-negative
    volume up to MAX_TRADE_VOLUME, and an integer millisecond timestamp no more than
    `max_age` seconds old and no more than `max_ahead` seconds in the future.
    """
    if not isinstance(data, list):
        return [], 1
    now_ms = (time.time() if now is None else now) * 1000
    oldest, newest = now_ms - max_age * 1000, now_ms + max_ahead * 1000
    trades: list[Trade] = []
    skipped = 0
    for item in data:
        try:
            symbol, price, volume, timestamp = item["s"], item["p"], item["v"], item["t"]
        except (TypeError, KeyError):
            skipped += 1
            continue
        if (
            isinstance(symbol, str)
            and is_number(price)
            and 0 < price <= MAX_TRADE_PRICE
            and is_number(volume)
            and 0 <= volume <= MAX_TRADE_VOLUME
            and isinstance(timestamp, int)
            and not isinstance(timestamp, bool)
            and oldest <= timestamp <= newest
        ):
            trades.append(Trade(symbol, price, volume, timestamp, _conditions(item)))
        else:
            skipped += 1
    return trades, skipped


MAX_CONDITIONS = 16  # codes per trade; Finnhub sends a handful
MAX_CONDITION_LENGTH = 8


def _conditions(item: dict[str, Any]) -> Conditions:
    """A trade's `c` as sent when it is a plausible list of codes or `null`; anything
    else (absent, or not what Finnhub sends) stays out: it would reach every client."""
    if "c" not in item:
        return NOT_SENT
    codes = item["c"]
    if codes is None:
        return None
    if (
        isinstance(codes, list)
        and len(codes) <= MAX_CONDITIONS
        and all(isinstance(code, str) and len(code) <= MAX_CONDITION_LENGTH for code in codes)
    ):
        return tuple(codes)
    return NOT_SENT


def encode_trade_message(trades: Sequence[Trade]) -> bytes:
    """Trades as Finnhub sends them: `{"type":"trade","data":[{"s","p","t","v","c"}]}`,
    in the order given, `c` as it came (a list, `null`, or left out)."""
    return trade_message([encode_trade(trade) for trade in trades])


def encode_trade(trade: Trade) -> bytes:
    """One trade as an item of a trade message's `data`: encoded once per upstream
    message, however many clients' frames it goes into."""
    item: dict[str, Any] = {
        "s": trade.symbol,
        "p": trade.price,
        "t": trade.timestamp,
        "v": trade.volume,
    }
    if trade.conditions is not NOT_SENT:
        item["c"] = trade.conditions
    return orjson.dumps(item)


def trade_message(items: Sequence[bytes]) -> bytes:
    """A trade message of encoded trades (`encode_trade`), in the order given: the same
    bytes `orjson.dumps` makes of the whole message."""
    return b'{"type":"trade","data":[' + b",".join(items) + b"]}"


# Price updates delivered per symbol from one upstream message: the newest ones
# (docs/protocol.md).
# Bars count every trade.
MAX_TRADES_PER_SYMBOL_PER_MESSAGE = 100


def newest_per_symbol(
    trades: list[Trade], limit: int = MAX_TRADES_PER_SYMBOL_PER_MESSAGE
) -> tuple[list[Trade], int]:
    """At most `limit` trades per symbol from one message: the newest, in their order.

    A client that falls behind gets only the newest price anyway (conflation); a single
    upstream message with tens of thousands of trades for one symbol would otherwise
    cost the broadcaster seconds and delay everyone else's updates. Returns the kept
    trades and how many were dropped.
    """
    counts: dict[str, int] = {}
    for trade in trades:
        counts[trade.symbol] = counts.get(trade.symbol, 0) + 1
    if max(counts.values(), default=0) <= limit:
        return trades, 0
    skip = {symbol: count - limit for symbol, count in counts.items() if count > limit}
    kept: list[Trade] = []
    for trade in trades:
        left = skip.get(trade.symbol, 0)
        if left:
            skip[trade.symbol] = left - 1
        else:
            kept.append(trade)
    return kept, len(trades) - len(kept)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
