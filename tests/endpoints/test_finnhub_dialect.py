"""Finnhub's own WebSocket protocol at `/`, against the real gateway: Finnhub's
documented `websocket-client` example pointed at the gateway, and aiohttp clients for
the corners (several symbols, errors, limits, tokens, origins)."""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import websocket

from tests.support.finnhub_dialect import finnhub_url
from tests.support.helpers import T0, GatewayUnderTest, Market, run_gateway, settings_for, trade

RECEIVE = 5.0


@asynccontextmanager
async def finnhub_example(url: str, symbols: list[str]) -> AsyncIterator[queue.Queue[Any]]:
    """Finnhub's documented client: `websocket.WebSocketApp` with `on_open` subscribing,
    run_forever in its own thread; every message it gets lands in the queue. It is
    closed off the event loop: its close waits for the gateway's close frame, which the
    gateway, in this loop, could not send while the loop was blocked."""
    received: queue.Queue[Any] = queue.Queue()

    def on_open(ws: websocket.WebSocketApp) -> None:
        for symbol in symbols:
            ws.send(json.dumps({"type": "subscribe", "symbol": symbol}))
        received.put("open")

    def on_message(ws: websocket.WebSocketApp, message: str) -> None:
        received.put(json.loads(message))

    def on_error(ws: websocket.WebSocketApp, error: Exception) -> None:
        received.put(error)

    app = websocket.WebSocketApp(url, on_open=on_open, on_message=on_message, on_error=on_error)
    # run_forever as the example calls it, but its wait for data wakes every 0.1 s (no
    # pings are sent without ping_interval), so it sees the close below at once.
    run = functools.partial(app.run_forever, ping_timeout=0.1)
    thread = threading.Thread(target=run, name="finnhub-example", daemon=True)
    thread.start()
    try:
        yield received
    finally:
        await asyncio.to_thread(app.close)
        await asyncio.to_thread(thread.join, 5)


async def next_message(received: queue.Queue[Any], skip: tuple[str, ...] = ("ping",)) -> Any:
    while True:
        message = await asyncio.to_thread(received.get, True, RECEIVE)
        if isinstance(message, dict) and message.get("type") in skip:
            continue
        return message


async def test_finnhubs_websocket_example_gets_trades_as_finnhub_sends_them(
    gateway: GatewayUnderTest, market: Market
) -> None:
    async with finnhub_example(finnhub_url(gateway, "token=my-own-finnhub-key"), ["AAPL"]) as got:
        assert await next_message(got) == "open"
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        sent = [
            {"s": "AAPL", "p": 189.5, "t": T0, "v": 100, "c": ["1", "12"]},
            {"s": "MSFT", "p": 410.0, "t": T0 + 1, "v": 5, "c": ["1"]},  # not subscribed
            {"s": "AAPL", "p": 189.25, "t": T0 + 2, "v": 0, "c": []},
            {"s": "AAPL", "p": 189.0, "t": T0 + 3, "v": 0.5, "c": None},
            {"s": "AAPL", "p": 188.5, "t": T0 + 4, "v": 1},  # no `c` at all
        ]
        await market.simulator.send_trades(sent)
        message = await next_message(got)
    # One frame for the upstream message: this client's trades, in order, as sent.
    assert message == {"type": "trade", "data": [sent[0], sent[2], sent[3], sent[4]]}


async def test_several_symbols_come_in_upstream_order_in_one_frame_per_message(
    gateway: GatewayUnderTest, market: Market
) -> None:
    async with gateway.session.ws_connect(finnhub_url(gateway)) as ws:
        for symbol in ("AAPL", "MSFT"):
            await ws.send_json({"type": "subscribe", "symbol": symbol})
        await market.simulator.wait_for(
            lambda: {"AAPL", "MSFT"} <= market.simulator.subscribed_symbols()
        )
        first = [trade("MSFT", 1.0), trade("GOOG", 2.0), trade("AAPL", 3.0), trade("MSFT", 4.0)]
        await market.simulator.send_trades(first)
        await market.simulator.send_trades([trade("AAPL", 5.0)])
        frames = [await _receive(ws), await _receive(ws)]
    assert [[t["p"] for t in frame["data"]] for frame in frames] == [[1.0, 3.0, 4.0], [5.0]]
    assert all(frame["type"] == "trade" for frame in frames)


async def test_a_finnhub_client_and_a_ws_client_share_one_upstream_subscription(
    gateway: GatewayUnderTest, market: Market
) -> None:
    seed = await gateway.connect()
    await seed.subscribe("NVDA")
    async with gateway.session.ws_connect(finnhub_url(gateway)) as ws:
        await ws.send_json({"type": "subscribe", "symbol": "NVDA"})
        await market.simulator.wait_for(lambda: "NVDA" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("NVDA", 120.0)])
        assert (await _receive(ws))["data"][0]["p"] == 120.0
        assert (await seed.expect("price_update"))["data"]["price"] == 120.0
        health = await gateway.health()
        assert health["clients_by_dialect"] == {"ws": 1, "finnhub": 1}
    assert len(market.simulator.received_of("subscribe", "NVDA")) == 1


async def test_a_refused_request_gets_finnhubs_error_and_the_connection_stays(
    market: Market,
) -> None:
    settings = settings_for(market, max_symbols_per_client=1)
    async with (
        run_gateway(settings) as gateway,
        gateway.session.ws_connect(finnhub_url(gateway)) as ws,
    ):
        await ws.send_json({"type": "subscribe", "symbol": "<b>nope"})
        bad = await _receive(ws)
        assert bad["type"] == "error" and bad["msg"].startswith("Invalid symbol")
        await ws.send_str("not json")
        assert (await _receive(ws))["type"] == "error"
        await ws.send_json({"type": "subscribe", "symbol": "AAPL"})
        await ws.send_json({"type": "subscribe", "symbol": "MSFT"})  # over the cap of 1
        over = await _receive(ws)
        assert over["type"] == "error" and "at most 1 symbols" in over["msg"]
        # Still open, still served: AAPL's trades come, MSFT's do not.
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("MSFT", 1.0), trade("AAPL", 2.0)])
        assert (await _receive(ws))["data"] == [trade("AAPL", 2.0)]
        # Unsubscribed: its trades stop (the next frame is MSFT's, now within the cap).
        await ws.send_json({"type": "unsubscribe", "symbol": "AAPL"})
        await ws.send_json({"type": "subscribe", "symbol": "MSFT"})
        await market.simulator.wait_for(lambda: "MSFT" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 3.0), trade("MSFT", 4.0)])
        assert (await _receive(ws))["data"] == [trade("MSFT", 4.0)]


async def test_pings_every_heartbeat(market: Market) -> None:
    async with (
        run_gateway(settings_for(market, heartbeat_interval=0.3)) as gateway,
        gateway.session.ws_connect(finnhub_url(gateway), autoping=True) as ws,
    ):
        assert await _receive(ws, skip=()) == {"type": "ping"}


async def test_the_token_is_the_gateways_credential_or_ignored(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    finnhub_key = "c0ffee-finnhub-key-of-a-client"
    # No credential configured: whatever token comes (a Finnhub key) is dropped.
    async with (
        run_gateway(settings_for(market)) as open_gateway,
        open_gateway.session.ws_connect(finnhub_url(open_gateway, f"token={finnhub_key}")) as ws,
    ):
        await ws.send_json({"type": "subscribe", "symbol": "AAPL"})
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    async with run_gateway(settings_for(market, gateway_token="s3cret")) as gateway:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gateway.session.ws_connect(finnhub_url(gateway, f"token={finnhub_key}"))
        assert refused.value.status == 401
        async with gateway.session.ws_connect(finnhub_url(gateway, "token=s3cret")) as ws:
            await ws.send_json({"type": "subscribe", "symbol": "MSFT"})
            await market.simulator.wait_for(lambda: "MSFT" in market.simulator.subscribed_symbols())
    assert finnhub_key not in caplog.text and "s3cret" not in caplog.text
    upstream_urls = [str(message) for message in market.simulator.received]
    assert not any(finnhub_key in url for url in upstream_urls)


@pytest.mark.parametrize(
    ("origin", "host", "accepted"),
    [
        ("http://127.0.0.1:{port}", "127.0.0.1:{port}", True),  # websocket-client's own
        ("http://localhost:{port}", "localhost:{port}", True),  # the gateway's /demo page
        ("http://evil.example:{port}", "evil.example:{port}", False),  # DNS rebinding
        ("http://evil.example", "127.0.0.1:{port}", False),  # another site
    ],
)
async def test_the_gateways_own_origin_needs_no_configuration_but_rebinding_is_refused(
    gateway: GatewayUnderTest, origin: str, host: str, accepted: bool
) -> None:
    port = gateway.base_url.rsplit(":", 1)[1]
    headers = {"Origin": origin.format(port=port), "Host": host.format(port=port)}
    for path in (finnhub_url(gateway), gateway.ws_url):
        try:
            ws = await gateway.session.ws_connect(path, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            assert not accepted and exc.status == 403
        else:
            assert accepted
            await ws.close()


async def _receive(ws: aiohttp.ClientWebSocketResponse, skip: tuple[str, ...] = ("ping",)) -> Any:
    while True:
        message = await ws.receive_json(timeout=RECEIVE)
        if message.get("type") not in skip:
            return message


async def test_an_address_may_follow_only_so_many_distinct_symbol_sets(market: Market) -> None:
    """MAX_SYMBOL_SETS_PER_ADDRESS: a subscribe or unsubscribe that would give the
    address one more set is refused (Finnhub's error, not applied); joining a set the
    address follows, or moving one's own set, is not; other addresses are not touched."""
    settings = settings_for(market, max_symbol_sets_per_address=2)
    async with run_gateway(settings) as gateway:
        url = finnhub_url(gateway)
        a, b, c = [await gateway.session.ws_connect(url) for _ in range(3)]
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            d = await other.ws_connect(url)

            async def request(ws: aiohttp.ClientWebSocketResponse, kind: str, symbol: str) -> str:
                """The error it got, or "" (an invalid symbol's error acknowledges it)."""
                await ws.send_json({"type": kind, "symbol": symbol})
                await ws.send_json({"type": "subscribe", "symbol": "<ack>"})
                got = await _receive(ws)
                if got["msg"].startswith("Invalid symbol"):
                    return ""
                assert (await _receive(ws))["msg"].startswith("Invalid symbol")
                return str(got["msg"])

            refused = "too many distinct symbol sets from your address (at most 2); "
            assert await request(a, "subscribe", "XX") == ""  # {XX}
            assert await request(b, "subscribe", "YY") == ""  # {YY}: two sets
            assert await request(c, "subscribe", "ZZ") == refused + "subscribe refused: ZZ"
            assert await request(c, "subscribe", "XX") == ""  # joins {XX}
            # {XX, YY} would be a third set: {XX} stays, c follows it.
            assert await request(a, "subscribe", "YY") == refused + "subscribe refused: YY"
            assert await request(b, "subscribe", "XX") == ""  # its own {YY} goes: still two
            assert await request(c, "subscribe", "YY") == ""  # joins {XX, YY}: one set
            assert await request(a, "unsubscribe", "XX") == ""  # a: none
            assert await request(a, "subscribe", "ZZ") == ""  # {ZZ}: two sets
            # b leaving XX would make {YY} while c keeps {XX, YY}: refused too.
            assert await request(b, "unsubscribe", "XX") == refused + "unsubscribe refused: XX"
            assert await request(d, "subscribe", "ZZ") == ""  # another address
            assert await request(d, "subscribe", "WW") == ""
            await market.simulator.wait_for(
                lambda: {"XX", "YY", "ZZ", "WW"} <= market.simulator.subscribed_symbols()
            )
            sent = [trade("XX", 1.0), trade("YY", 2.0), trade("ZZ", 3.0), trade("WW", 4.0)]
            await market.simulator.send_trades(sent)
            assert (await _receive(a))["data"] == [sent[2]]
            assert (await _receive(b))["data"] == sent[:2]  # XX still: its unsubscribe refused
            assert (await _receive(c))["data"] == sent[:2]
            assert (await _receive(d))["data"] == sent[2:]
            await d.close()
        for ws in (a, b, c):
            await ws.close()
