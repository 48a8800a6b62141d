"""The `/ws` dialect's requests as two tables: how each action is read (`PARSERS`:
action -> parser of its JSON) and what it does (`WsRequests`: action -> handler).

A new client action is one parser here, one handler here, and its schema in
asyncapi.yaml (tests/protocol/test_contract.py holds them together). `auth` is read here but
handled by the session (endpoints/ws_session.py), which owns the connection's token
and may close the socket. Handlers only call the hub and the bar delivery; they never
write to a socket themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from hub import Hub
from stock_gateway import client_requests, protocol
from stock_gateway.bars.book import INTERVALS, Interval
from stock_gateway.client_requests import ProtocolError
from stock_gateway.delivery.outbox import ClientConnection
from stock_gateway.protocol import quoted

Action = Literal[
    "subscribe", "unsubscribe", "ping", "options", "auth", "subscribe_bars", "unsubscribe_bars"
]


@dataclass(frozen=True)
class ClientRequest:
    action: Action
    symbols: tuple[str, ...] = ()
    options: dict[str, int] | None = None  # the option values given, validated
    token: str = field(default="", repr=False)  # an auth message's token: never shown
    interval: Interval | None = None  # subscribe_bars / unsubscribe_bars


def _symbols(message: Mapping[str, Any]) -> tuple[str, ...]:
    symbols = message.get("symbols")
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(isinstance(symbol, str) for symbol in symbols)
    ):
        raise ProtocolError("invalid_message", '"symbols" must be a non-empty list of strings')
    return tuple(symbols)


def _interval(message: Mapping[str, Any]) -> Interval:
    interval = message.get("interval")
    if interval not in INTERVALS:
        raise ProtocolError(
            "invalid_interval",
            f"interval {quoted(str(interval))} is not one of {', '.join(INTERVALS)}",
        )
    return interval  # type: ignore[no-any-return]


def _token(message: Mapping[str, Any]) -> str:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError("auth_failed", '"token" must be a non-empty string')
    return token


Parser = Callable[[Mapping[str, Any]], ClientRequest]
PARSERS: dict[str, Parser] = {
    "subscribe": lambda m: ClientRequest("subscribe", _symbols(m)),
    "unsubscribe": lambda m: ClientRequest("unsubscribe", _symbols(m)),
    "subscribe_bars": lambda m: ClientRequest("subscribe_bars", _symbols(m), interval=_interval(m)),
    "unsubscribe_bars": lambda m: ClientRequest(
        "unsubscribe_bars", _symbols(m), interval=_interval(m)
    ),
    "ping": lambda m: ClientRequest("ping"),
    "options": lambda m: ClientRequest("options", options=client_requests.parse_options(m)),
    "auth": lambda m: ClientRequest("auth", token=_token(m)),
}


def parse_client_message(text: str) -> ClientRequest:
    """Decode one text frame from a client, or raise ProtocolError saying why not."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid_json", "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "message must be a JSON object")
    action = message.get("action")
    if not isinstance(action, str):
        raise ProtocolError("invalid_message", 'message must have a string "action"')
    parser = PARSERS.get(action)
    if parser is None:
        raise ProtocolError(
            "unknown_action",
            f"unknown action {quoted(action)}; expected {', '.join(PARSERS)}",
        )
    return parser(message)


Handler = Callable[[ClientConnection, ClientRequest], Awaitable[None]]


class WsRequests:
    """What each action does for a client (every action but `auth`)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.handlers: dict[Action, Handler] = {
            "ping": self._ping,
            "options": self._options,
            "subscribe": self._symbols(hub.subscribe),
            "unsubscribe": self._symbols(hub.unsubscribe),
            "subscribe_bars": self._bars("subscribe"),
            "unsubscribe_bars": self._bars("unsubscribe"),
        }

    async def handle(self, client: ClientConnection, request: ClientRequest) -> None:
        await self.handlers[request.action](client, request)

    async def _ping(self, client: ClientConnection, request: ClientRequest) -> None:
        client.send(protocol.PONG)

    async def _options(self, client: ClientConnection, request: ClientRequest) -> None:
        assert request.options is not None
        self._hub.set_options(client, client.options.changed(request.options))

    @staticmethod
    def _valid(client: ClientConnection, request: ClientRequest) -> list[str]:
        """The request's valid symbols; the invalid ones are refused by name."""
        symbols, rejected = client_requests.split_symbols(request.symbols)
        if rejected:
            client.send(protocol.invalid_symbols_error(rejected))
        return symbols

    def _symbols(self, apply: Callable[[ClientConnection, list[str]], None]) -> Handler:
        async def handler(client: ClientConnection, request: ClientRequest) -> None:
            symbols = self._valid(client, request)
            if symbols:
                apply(client, symbols)

        return handler

    def _bars(self, change: Literal["subscribe", "unsubscribe"]) -> Handler:
        async def handler(client: ClientConnection, request: ClientRequest) -> None:
            symbols, bars = self._valid(client, request), self._hub.bars
            if not symbols or bars is None or request.interval is None:
                return
            if change == "subscribe":
                await bars.subscribe(client, symbols, request.interval)
            else:
                bars.unsubscribe(client, symbols, request.interval)

        return handler
