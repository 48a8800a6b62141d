"""What each dialect says: every connection has an `Encoder`, chosen by its endpoint,
which turns the events the hub, quote delivery and bar delivery hand it (a welcome, a
status, a market change, a subscription confirmation, refusals, a snapshot, a quote)
into its dialect's frames, or into nothing when its dialect has no such message. The
parts that produce events never ask which dialect a client speaks, so nothing of one
dialect can leak to another, and a new dialect is one encoder and one endpoint.

Live prices are the one stream encoded before it reaches a client, once for everyone:
the gateway's dialect takes the relay's `price_update` frames (`trade_format` None);
a dialect that carries raw trades names its `TradeFormat`, and delivery/trade_groups.py
builds one frame per group of its clients with the same symbols.

`GatewayEncoder` is the gateway's own JSON (protocol.py) for `/ws` and `/stream`;
Finnhub's is delivery/finnhub_encoder.py. `send_each` hands one event to many clients,
encoding it once per encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

from stock_gateway import protocol
from stock_gateway.bars.bar import BarEvent
from stock_gateway.bars.intervals import Interval
from stock_gateway.market_data.model import MarketStatus, Quote, Trade, UpstreamState
from stock_gateway.protocol import DeliveryOptions, ErrorCode, Frame

# (error code, its first reason, the symbols refused for it), in a stable order.
Refusals = Sequence[tuple[ErrorCode, str, list[str]]]
SubscriptionStatus = Literal["subscribed", "unsubscribed"]


class TradeFormat(Protocol):
    """How a dialect that carries raw trades puts them in frames."""

    def encode(self, trade: Trade) -> bytes:
        """One trade, encoded once per upstream message for every frame it goes into."""
        ...

    def trades(self, encoded: Sequence[bytes]) -> Frame:
        """One upstream message's trades for one client (`encode`d), in upstream order."""
        ...


class Encoder(Protocol):
    """A dialect: what it says for each event (None or nothing: it says nothing)."""

    @property
    def name(self) -> str:
        """The dialect as /health and /metrics count clients: "ws", "sse", "finnhub"."""
        ...

    @property
    def trade_format(self) -> TradeFormat | None:
        """None: the gateway's `price_update` frames; else raw trades in this format."""
        ...

    @property
    def quotes(self) -> bool:
        """Whether the dialect has quotes (a new subscriber's is fetched only then)."""
        ...

    def welcome(
        self, client_id: str, upstream: UpstreamState, market: MarketStatus | None
    ) -> list[Frame]: ...

    def status(self, upstream: UpstreamState) -> Frame | None: ...

    def market(self, status: MarketStatus) -> Frame | None: ...

    def subscription(
        self, status: SubscriptionStatus, symbols: list[str], interval: Interval | None = None
    ) -> Frame | None:
        """Prices' confirmation, or with `interval` bars'."""
        ...

    def refusals(self, refused: Refusals) -> list[Frame]: ...

    def options(self, options: DeliveryOptions) -> Frame | None: ...

    def snapshot(self, update: Frame) -> Frame | None:
        """A new subscriber's last price (`update`: the gateway's `price_update`)."""
        ...

    def quote(self, symbol: str, quote: Quote) -> Frame | None: ...

    def feed(self, symbol: str, feed: str) -> Frame | None:
        """How a symbol now comes: "live", "sampled" or "polled" (market_data/feed_plan.py)."""
        ...

    def history(self, bars: Frame) -> Frame | None:
        """A series' history (`bars`: the gateway's `bars` message, shared)."""
        ...

    def bar(self, event: BarEvent) -> Frame | None: ...

    def quote_unavailable(self, symbol: str, retry_after: float) -> Frame | None: ...

    def upstream_error(self) -> Frame | None:
        """The upstream reported an error that names no symbol."""
        ...

    def upstream_refused(self, symbol: str) -> Frame | None:
        """The upstream refused a symbol the client held (it is dropped next)."""
        ...


class GatewayEncoder:
    """The gateway's own protocol (protocol.py, asyncapi.yaml): `/ws` and `/stream`."""

    trade_format: TradeFormat | None = None
    quotes = True

    def __init__(self, name: str) -> None:
        self.name = name
        # The last market and status frames, shared by every welcome until they change.
        self._market: tuple[MarketStatus, Frame] | None = None
        self._status: tuple[UpstreamState, Frame] | None = None

    def welcome(
        self, client_id: str, upstream: UpstreamState, market: MarketStatus | None
    ) -> list[Frame]:
        frames = [protocol.connection_message(client_id), self.status(upstream)]
        if market is not None:
            frames.append(self.market(market))
        return frames

    def status(self, upstream: UpstreamState) -> Frame:
        if self._status is None or self._status[0] != upstream:
            self._status = (upstream, protocol.status_message(upstream))
        return self._status[1]

    def market(self, status: MarketStatus) -> Frame:
        if self._market is None or self._market[0] != status:
            self._market = (status, protocol.market_message(status))
        return self._market[1]

    def subscription(
        self, status: SubscriptionStatus, symbols: list[str], interval: Interval | None = None
    ) -> Frame:
        return protocol.subscription_message(status, symbols, interval)

    def refusals(self, refused: Refusals) -> list[Frame]:
        return [
            protocol.error_message(code, f"{reason}; refused: {', '.join(names)}", names)
            for code, reason, names in refused
        ]

    def options(self, options: DeliveryOptions) -> Frame:
        return protocol.options_message(options)

    def snapshot(self, update: Frame) -> Frame:
        return update

    def quote(self, symbol: str, quote: Quote) -> Frame:
        return protocol.quote_message(symbol, quote)

    def feed(self, symbol: str, feed: str) -> Frame:
        return protocol.feed_message(symbol, feed)

    def history(self, bars: Frame) -> Frame:
        return bars

    def bar(self, event: BarEvent) -> Frame:
        return protocol.bar_message(event)

    def quote_unavailable(self, symbol: str, retry_after: float) -> Frame:
        return protocol.error_message(
            "quote_unavailable",
            f"no quote could be fetched in time; live prices follow when the symbol "
            f"trades (try again in {max(1, round(retry_after))} s)",
            [symbol],
        )

    def upstream_error(self) -> Frame:
        return protocol.error_message("upstream_error", protocol.UPSTREAM_REPORTED_ERROR)

    def upstream_refused(self, symbol: str) -> Frame:
        return protocol.error_message("upstream_error", protocol.UPSTREAM_REFUSED_SYMBOL, [symbol])


WS = GatewayEncoder("ws")
SSE = GatewayEncoder("sse")


class Recipient(Protocol):
    @property
    def encoder(self) -> Encoder: ...

    def send(self, frame: Frame) -> None: ...


def send_each(clients: Iterable[Recipient], encode: Callable[[Encoder], Frame | None]) -> int:
    """One event to every client, in its own dialect: encoded once per encoder; how
    many were sent it (a dialect without such a message sends nothing)."""
    frames: dict[Encoder, Frame | None] = {}
    sent = 0
    for client in clients:
        encoder = client.encoder
        if encoder in frames:
            frame = frames[encoder]
        else:
            frame = frames[encoder] = encode(encoder)
        if frame is not None:
            client.send(frame)
            sent += 1
    return sent
