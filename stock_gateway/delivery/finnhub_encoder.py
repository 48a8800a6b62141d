"""Finnhub's WebSocket dialect as an `Encoder` (delivery/encoders.py), for `/`
(endpoints/finnhub_ws.py): Finnhub sends only `trade`, `ping` and `error`
(docs/finnhub.md), so of the gateway's events only refusals are said, as Finnhub's
`{"type":"error","msg":"..."}`; welcomes, statuses, market changes, confirmations,
snapshots, quotes and bars say nothing. Trades go out raw, as Finnhub sent them, in one
`{"type":"trade","data":[...]}` per upstream message (delivery/trade_groups.py)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from stock_gateway.bars.bar import BarEvent
from stock_gateway.bars.intervals import Interval
from stock_gateway.delivery.encoders import Refusals, SubscriptionStatus, TradeFormat
from stock_gateway.market_data.model import MarketStatus, Quote, Trade, UpstreamState
from stock_gateway.market_data.trade_wire import encode_trade, trade_message
from stock_gateway.protocol import DeliveryOptions, Frame


class FinnhubEncoder:
    name = "finnhub"
    quotes = False

    @property
    def trade_format(self) -> TradeFormat:
        return self

    # -- trades (TradeFormat) --------------------------------------------------------

    def encode(self, trade: Trade) -> bytes:
        return encode_trade(trade)

    def trades(self, encoded: Sequence[bytes]) -> Frame:
        return Frame(trade_message(encoded), "trade")

    # -- what Finnhub says -------------------------------------------------------------

    def error(self, message: str) -> Frame:
        """A refusal (the connection stays open)."""
        return Frame(orjson.dumps({"type": "error", "msg": message}), "error")

    def refusals(self, refused: Refusals) -> list[Frame]:
        return [
            self.error(f"{reason}; refused: {', '.join(names)}") for _, reason, names in refused
        ]

    def upstream_refused(self, symbol: str) -> Frame:
        return self.error(f"Invalid symbol {symbol}")

    # -- what Finnhub never sends ----------------------------------------------------------

    def welcome(
        self, client_id: str, upstream: UpstreamState, market: MarketStatus | None
    ) -> list[Frame]:
        return []

    def status(self, upstream: UpstreamState) -> None:
        return None

    def market(self, status: MarketStatus) -> None:
        return None

    def subscription(
        self, status: SubscriptionStatus, symbols: list[str], interval: Interval | None = None
    ) -> None:
        return None

    def options(self, options: DeliveryOptions) -> None:
        return None

    def snapshot(self, update: Frame) -> None:
        return None

    def quote(self, symbol: str, quote: Quote) -> None:
        return None

    def feed(self, symbol: str, feed: str) -> None:
        return None

    def quote_unavailable(self, symbol: str, retry_after: float) -> None:
        return None

    def history(self, bars: Frame) -> None:
        return None

    def bar(self, event: BarEvent) -> None:
        return None

    def upstream_error(self) -> None:
        return None


FINNHUB = FinnhubEncoder()
