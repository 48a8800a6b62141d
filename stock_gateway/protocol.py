"""The client protocol on `/ws`: the frames we send back (what browsers may send is read
in client_requests.py, by this module's symbol rule and error codes): the
seed's contract (`connection`, `subscription`, `price_update`) plus the additions in
asyncapi.yaml and docs/protocol.md. Message shapes live here and nowhere else. Pure
functions only: no I/O, no state, never anything from the upstream's credentials."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import orjson

from stock_gateway.bars.book import BarEvent, Interval
from stock_gateway.market_data.model import MarketStatus, Quote, Trade, UpstreamState
from stock_gateway.market_data.trade_wire import newest_per_symbol

# Finnhub's symbol forms: stocks (AAPL, BRK.B), indices (^GSPC), crypto
# (BINANCE:BTCUSDT), forex (OANDA:EUR_USD, and brokers with a space, "IC MARKETS:1").
# Letters are upper-cased first; nothing that could be markup, quotes or control
# characters gets through, and the length is capped so a symbol stays a symbol.
SYMBOL_PATTERN = re.compile(r"[A-Z0-9^][A-Z0-9.:_/^ -]{0,39}")
SYMBOL_RULE = (
    "1-40 characters: A-Z, 0-9 and . : _ / ^ - or space, starting with a letter, a digit or ^"
)


# Every error code the server can send (asyncapi.yaml and docs/protocol.md document each;
# tests/project/test_docs.py holds all three in agreement).
ErrorCode = Literal[
    "invalid_json",
    "invalid_message",
    "unknown_action",
    "invalid_symbol",
    "too_many_symbols",
    "symbol_limit",
    "symbol_quota",
    "forbidden_symbol",
    "rate_limited",
    "upstream_error",
    "quote_unavailable",
    "invalid_options",
    "auth_required",
    "auth_failed",
    "auth_timeout",
    "too_many_connections",
    "invalid_interval",
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# Every close code a client can see, and why.
CLOSE_POLICY_VIOLATION = 1008  # over the message or frame budget
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_KEEPALIVE_TIMEOUT = 1011  # sent by the server protocol layer
CLOSE_SERVICE_RESTART = 1012  # sent by uvicorn on SIGTERM
CLOSE_TRY_AGAIN_LATER = 1013  # server full, or slow consumer
CLOSE_TOKEN_EXPIRED = 4001  # signed tokens (access/token_session.py): unrenewed at `exp`
CLOSE_AUTH_FAILED = 4003
CLOSE_AUTH_TIMEOUT = 4008
CLOSE_TOO_MANY_FOR_USER = 4029  # MAX_CONNECTIONS_PER_USER
# How long a client we close gets to read the close frame (and its reason) before the
# connection is cut: one that does not read would otherwise hold its buffers forever.
CLOSE_GRACE_SECONDS = 1.0
CLOSE_CODES = (
    CLOSE_POLICY_VIOLATION,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_KEEPALIVE_TIMEOUT,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    CLOSE_TOO_MANY_FOR_USER,
)


# Every message type the server sends -> its schema in asyncapi.yaml (a Frame's `kind`).
# A new message type is a builder below, a row here and a schema there;
# tests/protocol/test_contract.py holds the three together.
MESSAGE_SCHEMAS = {
    "connection": "Connection",
    "status": "Status",
    "subscription": "Subscription",
    "price_update": "PriceUpdate",
    "price_updates": "PriceUpdates",
    "options": "OptionsConfirmed",
    "auth": "AuthStatus",
    "bars": "Bars",
    "bar": "BarMessage",
    "quote": "Quote",
    "market": "Market",
    "feed": "FeedChange",
    "pong": "Pong",
    "error": "Error",
}


@dataclass(frozen=True)
class DeliveryOptions:
    """How a client wants its price updates: `throttle_ms` at most one per symbol per that
    many milliseconds (the newest), `batch_ms` grouped into one `price_updates` frame at
    most that often. Zero turns each off; both off is the seed's protocol."""

    throttle_ms: int = 0
    batch_ms: int = 0

    @property
    def paced(self) -> bool:
        return bool(self.throttle_ms or self.batch_ms)

    def changed(self, given: Mapping[str, int]) -> DeliveryOptions:
        """These options with the values a client gave (the others stay as they are)."""
        return replace(self, **given)


def quoted(value: str, limit: int = 40) -> str:
    # Echo client input only as escaped JSON, shortened: never raw markup or control bytes.
    shown = value if len(value) <= limit else value[:limit] + "..."
    return orjson.dumps(shown).decode()


class Frame:
    """One server-to-client message, encoded once and shared by every recipient.

    `kind` is its `type` and `symbol` the symbol it is about ("" for none), carried
    beside the bytes so nothing downstream parses them back. `wire` is the complete
    WebSocket text frame (server frames are unmasked, so the bytes are the same for
    every client); `text` is the str an ASGI send needs. Both are built on first use
    and cached.
    """

    __slots__ = ("_item", "_text", "_wire", "kind", "payload", "symbol")

    def __init__(self, payload: bytes, kind: str, symbol: str = "") -> None:
        self.payload = payload
        self.kind = kind
        self.symbol = symbol
        self._wire: bytes | None = None
        self._text: str | None = None
        self._item: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = websocket_text_header(len(self.payload)) + self.payload
        return self._wire

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.payload.decode()
        return self._text

    @property
    def batch_item(self) -> bytes:
        """A `price_update` as an element of `price_updates.updates`: the same JSON
        without its `type` (`{"symbol":...,"data":{...}}`), cut from the encoded bytes."""
        if self._item is None:
            assert self.payload.startswith(_PRICE_UPDATE_PREFIX), "not a price_update"
            self._item = b"{" + self.payload[len(_PRICE_UPDATE_PREFIX) :]
        return self._item


_PRICE_UPDATE_PREFIX = b'{"type":"price_update",'
_BATCH_OPEN, _BATCH_CLOSE = b'{"type":"price_updates","updates":[', b"]}"


def price_updates_message(items: list[bytes]) -> Frame:
    """Several price updates in one frame (a client's `batch_ms`), in arrival order."""
    return Frame(_BATCH_OPEN + b",".join(items) + _BATCH_CLOSE, "price_updates")


def price_update_frame(symbol: str, payload: bytes) -> Frame:
    """A `price_update` encoded elsewhere (by a cluster's leader), as received."""
    return Frame(payload, "price_update", symbol)


def auth_message(
    status: Literal["authenticated", "expiring", "expired"], user: str, expires_in: int
) -> Frame:
    return _encode({"type": "auth", "status": status, "user": user, "expires_in": expires_in})


def options_message(options: DeliveryOptions) -> Frame:
    return _encode(
        {"type": "options", "throttle_ms": options.throttle_ms, "batch_ms": options.batch_ms}
    )


def websocket_text_header(length: int) -> bytes:
    """RFC 6455 section 5.2: FIN + text opcode, no mask, then the payload length."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big")
    return bytes((0x81, 127)) + length.to_bytes(8, "big")


def _encode(message: dict[str, Any]) -> Frame:
    symbol = message.get("symbol")
    return Frame(orjson.dumps(message), message["type"], symbol if isinstance(symbol, str) else "")


def connection_message(client_id: str) -> Frame:
    return _encode({"type": "connection", "status": "connected", "client_id": client_id})


def subscription_message(
    status: Literal["subscribed", "unsubscribed"],
    symbols: list[str],
    interval: Interval | None = None,
) -> Frame:
    message: dict[str, object] = {"type": "subscription", "status": status, "symbols": symbols}
    if interval is not None:
        message["interval"] = interval  # a bar subscription's confirmation
    return _encode(message)


def bars_message(symbol: str, interval: Interval, bars: bytes = b"[]") -> Frame:
    """A series' history; `bars`: the JSON array of its bars (delivery/bar_history.py)."""
    head = orjson.dumps({"type": "bars", "symbol": symbol, "interval": interval})
    return Frame(head[:-1] + b',"bars":' + bars + b"}", "bars", symbol)


def bar_message(event: BarEvent) -> Frame:
    message: dict[str, object] = {
        "type": "bar",
        "symbol": event.symbol,
        "interval": event.interval,
        "bar": event.bar,
        "final": event.final,
    }
    if event.revised:
        message["revised"] = True
    return _encode(message)


def status_message(upstream: UpstreamState) -> Frame:
    return _encode({"type": "status", "upstream": upstream})


def price_update_message(
    symbol: str,
    price: float,
    volume: float,
    timestamp: int,
    previous_close: float | None = None,
    feed: str = "live",
) -> Frame:
    """The seed's `price_update`; with `change` and `change_percent` against the previous
    close added when the gateway knows it, and the `feed` it came by (added fields only)."""
    data: dict[str, float | int] = {"price": price, "volume": volume, "timestamp": timestamp}
    if previous_close:  # unknown (None) or a symbol without one (0): no change fields
        data["change"] = round(price - previous_close, 6)
        data["change_percent"] = round((price - previous_close) / previous_close * 100, 4)
    return _encode({"type": "price_update", "symbol": symbol, "data": data, "feed": feed})


def encode_trades(
    trades: list[Trade],
    previous_close: Callable[[str], float | None] | None = None,
    feed_of: Callable[[str], str] = lambda symbol: "live",
) -> list[Frame]:
    """The one place trades become frames: each symbol's newest trade in one upstream message
    as a `price_update` (the day's change when known, the symbol's feed)."""
    newest, _ = newest_per_symbol(trades)
    close = previous_close or dict[str, float]().get
    return [price_update_message(*t[:4], close(t.symbol), feed_of(t.symbol)) for t in newest]


def feed_message(symbol: str, feed: str) -> Frame:
    """A symbol's feed changed: "live", "sampled" or "polled" (market_data/feed_plan.py)."""
    return _encode({"type": "feed", "symbol": symbol, "feed": feed})


def quote_body(symbol: str, quote: Quote) -> dict[str, object]:
    """A price from Finnhub's `/quote` (the last price when no trade has come yet): the
    `quote` message, and the answer of `GET /quote/{symbol}`."""
    return {
        "type": "quote",
        "symbol": symbol,
        "data": {
            "price": quote.price,
            "change": quote.change,
            "change_percent": quote.change_percent,
            "open": quote.open,
            "high": quote.high,
            "low": quote.low,
            "previous_close": quote.previous_close,
            "timestamp": quote.timestamp,
        },
        "feed": "polled",
    }


def quote_message(symbol: str, quote: Quote) -> Frame:
    return _encode(quote_body(symbol, quote))


def market_message(status: MarketStatus) -> Frame:
    return _encode({"type": "market", **status.as_dict()})


def error_message(code: ErrorCode, message: str, symbols: list[str] | None = None) -> Frame:
    body: dict[str, object] = {"type": "error", "code": code, "message": message}
    if symbols is not None:
        body["symbols"] = symbols
    return _encode(body)


def invalid_symbols_error(rejected: list[str]) -> Frame:
    names = ", ".join(quoted(raw) for raw in rejected[:10])
    more = f" and {len(rejected) - 10} more" if len(rejected) > 10 else ""
    return error_message(
        "invalid_symbol",
        f"invalid symbol(s): {names}{more}; a symbol is {SYMBOL_RULE}",
        [raw[:40] for raw in rejected[:10]],
    )


PONG = _encode({"type": "pong"})

# Told when the upstream refuses something: fixed words naming no provider, never the
# upstream's own text (could be anything).
UPSTREAM_REFUSED_SYMBOL = "the upstream refused this symbol"
UPSTREAM_REPORTED_ERROR = "the upstream reported an error; prices may pause"
