"""The client protocol and the upstream contract, end to end against the real server."""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from tests.support.helpers import (
    T0,
    GatewayUnderTest,
    Market,
    poll_until,
    run_gateway,
    settings_for,
    trade,
)


def price_update(
    symbol: str, price: float, volume: float = 100, timestamp: int = T0
) -> dict[str, object]:
    return {
        "type": "price_update",
        "symbol": symbol,
        "data": {"price": price, "volume": volume, "timestamp": timestamp},
        "feed": "live",
    }


async def upstream_barrier(market: Market, gateway: GatewayUnderTest) -> None:
    """Wait until every subscription change made so far has reached the upstream.

    Subscribing and then unsubscribing a probe symbol forces two reconciliation passes
    after everything earlier: once the probe's unsubscribe arrives, nothing earlier is
    still in flight.
    """
    probe = await gateway.connect()
    before = len(market.simulator.received_of("unsubscribe", "ZZBARRIER"))
    await probe.subscribe("ZZBARRIER")
    await probe.unsubscribe("ZZBARRIER")
    await market.simulator.wait_for(
        lambda: len(market.simulator.received_of("unsubscribe", "ZZBARRIER")) > before
    )
    await probe.ws.close()


async def test_connection_message_then_upstream_status(gateway: GatewayUnderTest) -> None:
    ws = await gateway.session.ws_connect(gateway.ws_url)
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "connection" and first["status"] == "connected"
    assert uuid.UUID(first["client_id"]).version == 4
    assert await ws.receive_json(timeout=5) == {"type": "status", "upstream": "connected"}
    await ws.close()


async def test_three_clients_one_upstream_subscribe(
    market: Market, gateway: GatewayUnderTest
) -> None:
    clients = [await gateway.connect() for _ in range(3)]
    for client in clients:
        confirmation = await client.subscribe("aapl ")
        assert confirmation == {"type": "subscription", "status": "subscribed", "symbols": ["AAPL"]}
    await upstream_barrier(market, gateway)
    assert market.simulator.received_of("subscribe", "AAPL") == [
        {"type": "subscribe", "symbol": "AAPL"}
    ]
    assert (await gateway.health())["symbols"] == ["AAPL"]


async def test_fan_out_reaches_only_subscribers_with_the_seed_shape(
    market: Market, gateway: GatewayUnderTest
) -> None:
    apple, microsoft, both = [await gateway.connect() for _ in range(3)]
    await apple.subscribe("AAPL")
    await microsoft.subscribe("MSFT")
    await both.subscribe("AAPL", "MSFT")
    await market.simulator.wait_for(
        lambda: {"AAPL", "MSFT"} <= market.simulator.subscribed_symbols()
    )

    await market.simulator.send_trades(
        [
            trade("AAPL", 150.25, volume=100),
            trade("MSFT", 410.5, volume=0.5, timestamp=T0 + 1),
        ]
    )
    assert await apple.expect("price_update") == price_update("AAPL", 150.25)
    # Updates keep upstream order, so MSFT's client seeing MSFT first proves AAPL skipped it.
    assert await microsoft.expect("price_update") == price_update("MSFT", 410.5, 0.5, T0 + 1)
    assert await both.expect("price_update") == price_update("AAPL", 150.25)
    assert await both.expect("price_update") == price_update("MSFT", 410.5, 0.5, T0 + 1)

    # A later AAPL trade is the next thing the AAPL-only client sees: no MSFT leaked in.
    await market.simulator.send_trades([trade("MSFT", 411.0), trade("AAPL", 151.0)])
    assert (await apple.expect("price_update"))["data"]["price"] == 151.0


async def test_one_frame_with_many_trades_and_missing_conditions(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await client.subscribe("BINANCE:BTCUSDT")
    await market.simulator.wait_for(
        lambda: "BINANCE:BTCUSDT" in market.simulator.subscribed_symbols()
    )
    await market.simulator.send_raw(
        '{"type":"trade","data":['
        f'{{"s":"BINANCE:BTCUSDT","p":65000.5,"t":{T0},"v":0.011467,"c":null}},'
        f'{{"s":"BINANCE:BTCUSDT","p":65001,"t":{T0 + 1},"v":0.5}}]}}'
    )
    first = await client.expect("price_update")
    second = await client.expect("price_update")
    assert first["data"] == {"price": 65000.5, "volume": 0.011467, "timestamp": T0}
    assert second["data"] == {"price": 65001, "volume": 0.5, "timestamp": T0 + 1}


async def test_unsubscribe_is_confirmed_and_reference_counted(
    market: Market, gateway: GatewayUnderTest
) -> None:
    first, second = await gateway.connect(), await gateway.connect()
    await first.subscribe("AAPL")
    await second.subscribe("AAPL")

    assert await first.unsubscribe("AAPL") == {
        "type": "subscription",
        "status": "unsubscribed",
        "symbols": ["AAPL"],
    }
    await upstream_barrier(market, gateway)
    assert market.simulator.received_of("unsubscribe", "AAPL") == []

    # The other client still streams.
    await market.simulator.send_trades([trade("AAPL", 152.0)])
    assert (await second.expect("price_update"))["data"]["price"] == 152.0

    await second.unsubscribe("AAPL")
    await market.simulator.wait_for(
        lambda: bool(market.simulator.received_of("unsubscribe", "AAPL"))
    )
    await upstream_barrier(market, gateway)
    assert len(market.simulator.received_of("unsubscribe", "AAPL")) == 1
    assert (await gateway.health())["symbols"] == []


async def test_disconnect_releases_symbols(market: Market, gateway: GatewayUnderTest) -> None:
    first, second = await gateway.connect(), await gateway.connect()
    await first.subscribe("NVDA", "AAPL")
    await second.subscribe("NVDA")
    await first.ws.close()
    await market.simulator.wait_for(
        lambda: bool(market.simulator.received_of("unsubscribe", "AAPL"))
    )
    await upstream_barrier(market, gateway)
    assert market.simulator.received_of("unsubscribe", "NVDA") == []

    await second.ws.close()
    await market.simulator.wait_for(
        lambda: bool(market.simulator.received_of("unsubscribe", "NVDA"))
    )
    health = await gateway.health()
    assert health["clients"] == 0 and health["symbols"] == []


async def test_unsubscribing_an_unknown_symbol_and_subscribing_twice_are_harmless(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    assert (await client.unsubscribe("TSLA"))["symbols"] == ["TSLA"]
    await client.subscribe("AAPL")
    await client.subscribe("AAPL", "aapl")
    await upstream_barrier(market, gateway)
    assert len(market.simulator.received_of("subscribe", "AAPL")) == 1
    assert market.simulator.received_of("unsubscribe", "TSLA") == []

    await market.simulator.send_trades([trade("AAPL", 150.0), trade("AAPL", 150.5)])
    # One update per trade, not one per subscribe call.
    assert (await client.expect("price_update"))["data"]["price"] == 150.0
    assert (await client.expect("price_update"))["data"]["price"] == 150.5


async def test_snapshot_on_subscribe(market: Market, gateway: GatewayUnderTest) -> None:
    early = await gateway.connect()
    await early.subscribe("AAPL")
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await market.simulator.send_trades([trade("AAPL", 150.0), trade("AAPL", 150.75)])
    await early.expect("price_update")
    await early.expect("price_update")

    late = await gateway.connect()
    await late.subscribe("AAPL")
    # No new trade was sent: this is the remembered last one.
    assert await late.expect("price_update") == price_update("AAPL", 150.75)


async def test_upstream_drop_reconnects_and_resubscribes_without_client_reconnect(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await client.wait_upstream_connected()
    await client.subscribe("AAPL", "MSFT")
    await market.simulator.wait_for(
        lambda: {"AAPL", "MSFT"} <= market.simulator.subscribed_symbols()
    )
    connections_before = market.simulator.connection_count

    await market.simulator.drop_connections()
    assert await client.expect("status", skip=()) == {"type": "status", "upstream": "reconnecting"}
    assert await client.expect("status", skip=()) == {"type": "status", "upstream": "connected"}
    await market.simulator.wait_for(
        lambda: {"AAPL", "MSFT"} <= market.simulator.subscribed_symbols()
    )
    assert market.simulator.connection_count == connections_before + 1

    await market.simulator.send_trades([trade("MSFT", 420.0)])
    assert (await client.expect("price_update"))["symbol"] == "MSFT"
    assert not client.ws.closed
    health = await gateway.health()
    assert health["reconnects"] >= 1 and health["upstream"] == "connected"


async def test_ping_gets_pong(gateway: GatewayUnderTest) -> None:
    client = await gateway.connect()
    await client.send({"action": "ping"})
    assert await client.expect("pong") == {"type": "pong"}


async def test_every_error_code_keeps_the_connection_open(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await client.wait_upstream_connected()
    cases: list[tuple[str | bytes, str]] = [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"symbols": ["AAPL"]}', "invalid_message"),
        ('{"action": "subscribe"}', "invalid_message"),
        ('{"action": "subscribe", "symbols": []}', "invalid_message"),
        ('{"action": "subscribe", "symbols": "AAPL"}', "invalid_message"),
        ('{"action": "subscribe", "symbols": ["AAPL", 7]}', "invalid_message"),
        ('{"action": "buy", "symbols": ["AAPL"]}', "unknown_action"),
        (b"\x00\x01binary", "invalid_message"),
    ]
    for frame, code in cases:
        if isinstance(frame, bytes):
            await client.ws.send_bytes(frame)
        else:
            await client.ws.send_str(frame)
        error = await client.receive()
        assert error["type"] == "error" and error["code"] == code, (frame, error)
        assert isinstance(error["message"], str) and error["message"]
    await client.send({"action": "ping"})
    assert await client.receive() == {"type": "pong"}
    assert (await gateway.health())["symbols"] == []


async def test_invalid_symbols_are_named_and_valid_ones_still_applied(
    market: Market, gateway: GatewayUnderTest
) -> None:
    client = await gateway.connect()
    await client.wait_upstream_connected()
    await client.send(
        {
            "action": "subscribe",
            "symbols": ["brk.b", "<script>", "BINANCE:BTCUSDT", "A\u0000B", " oanda:eur_usd "],
        }
    )
    error = await client.receive()
    assert error["type"] == "error" and error["code"] == "invalid_symbol"
    assert error["symbols"] == ["<script>", "A\u0000B"]
    assert "<script>" in error["message"]
    assert await client.receive() == {
        "type": "subscription",
        "status": "subscribed",
        "symbols": ["BRK.B", "BINANCE:BTCUSDT", "OANDA:EUR_USD"],
    }
    await market.simulator.wait_for(
        lambda: (
            market.simulator.subscribed_symbols() == {"BRK.B", "BINANCE:BTCUSDT", "OANDA:EUR_USD"}
        )
    )

    await client.send({"action": "subscribe", "symbols": ["bad symbol!"]})
    assert (await client.receive())["code"] == "invalid_symbol"
    await client.send({"action": "ping"})
    assert await client.receive() == {"type": "pong"}  # no empty confirmation came first


async def test_upstream_error_reaches_only_the_clients_of_that_symbol(
    market: Market, gateway: GatewayUnderTest
) -> None:
    asker, bystander = await gateway.connect(), await gateway.connect()
    await bystander.subscribe("AAPL")
    await asker.subscribe("FAKESYM")
    await market.simulator.wait_for(lambda: "FAKESYM" in market.simulator.subscribed_symbols())

    await market.simulator.send_raw('{"type":"error","msg":"Invalid symbol FAKESYM"}')
    error = await asker.expect("error")
    assert error == {
        "type": "error",
        "code": "upstream_error",
        "message": "the upstream refused this symbol",  # fixed words, not Finnhub's
        "symbols": ["FAKESYM"],
    }
    assert await asker.expect("subscription") == {
        "type": "subscription",
        "status": "unsubscribed",
        "symbols": ["FAKESYM"],
    }
    await market.simulator.send_trades([trade("AAPL", 150.0)])
    assert (await bystander.expect("price_update"))["symbol"] == "AAPL"  # no error came first
    assert (await gateway.health())["symbols"] == ["AAPL"]


async def test_symbol_cap_error_is_blamed_on_the_subscribe_that_caused_it(market: Market) -> None:
    market.simulator.max_symbols = 1
    async with run_gateway(settings_for(market)) as gateway:
        first, second = await gateway.connect(), await gateway.connect()
        await first.wait_upstream_connected()
        await first.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await second.subscribe("MSFT")
        error = await second.expect("error")
        assert error["code"] == "upstream_error" and error["symbols"] == ["MSFT"]
        assert error["message"] == "the upstream refused this symbol"
        assert (await gateway.health())["symbols"] == ["AAPL"]
        await market.simulator.send_trades([trade("AAPL", 1.5)])
        assert (await first.expect("price_update"))["symbol"] == "AAPL"


async def test_unattributable_upstream_error_reaches_every_client(
    market: Market, gateway: GatewayUnderTest
) -> None:
    first, second = await gateway.connect(), await gateway.connect()
    await first.subscribe("AAPL")
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await market.simulator.send_raw('{"type":"error","msg":"Internal server error"}')
    for client in (first, second):
        assert await client.expect("error") == {
            "type": "error",
            "code": "upstream_error",
            "message": "the upstream reported an error; prices may pause",
        }
    assert (await gateway.health())["symbols"] == ["AAPL"]


async def test_symbol_cap_errors_for_a_burst_blame_the_refused_subscribes(market: Market) -> None:
    market.simulator.max_symbols = 2
    async with run_gateway(settings_for(market)) as gateway:
        client = await gateway.connect()
        await client.wait_upstream_connected()
        await client.subscribe("AAA", "BBB", "CCC", "DDD")
        refused = {
            tuple((await client.expect("error", skip=("status", "subscription")))["symbols"])
        }
        refused.add(
            tuple((await client.expect("error", skip=("status", "subscription")))["symbols"])
        )
        assert refused == {("CCC",), ("DDD",)}
        assert (await gateway.health())["symbols"] == ["AAA", "BBB"]
        assert market.simulator.subscribed_symbols() == {"AAA", "BBB"}
        assert market.simulator.received_of("unsubscribe") == []


async def test_error_about_a_symbol_nobody_holds_does_not_touch_others(
    market: Market, gateway: GatewayUnderTest
) -> None:
    leaver, holder = await gateway.connect(), await gateway.connect()
    await leaver.subscribe("FOO")
    await leaver.unsubscribe("FOO")
    await holder.subscribe("AAPL")
    await market.simulator.wait_for(lambda: market.simulator.subscribed_symbols() == {"AAPL"})
    await market.simulator.send_raw('{"type":"error","msg":"Invalid symbol FOO"}')
    error = await holder.expect("error")
    assert "symbols" not in error  # not attributed: nobody holds FOO now
    await market.simulator.send_trades([trade("AAPL", 2.0)])
    assert (await holder.expect("price_update"))["symbol"] == "AAPL"
    assert (await gateway.health())["symbols"] == ["AAPL"]


async def test_http_endpoints(gateway: GatewayUnderTest) -> None:
    root = await gateway.get_json("/")
    assert root["status"] == "ok"
    health = await gateway.health()
    for field in (
        "status",
        "upstream",
        "clients",
        "symbols",
        "upstream_messages_received",
        "price_updates_sent",
        "reconnects",
        "uptime_seconds",
    ):
        assert field in health, field
    assert health["status"] == "ok" and health["upstream"] == "connected"
    async with gateway.session.get(gateway.base_url + "/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    for documented in (
        "/ws",
        "/health",
        "price_update",
        "subscription",
        "invalid_symbol",
        "upstream_error",
    ):
        assert documented in page, documented


async def test_favicon_is_served(gateway: GatewayUnderTest) -> None:
    async with gateway.session.get(gateway.base_url + "/favicon.ico") as response:
        assert response.status == 200
        assert response.content_type == "image/svg+xml"
        assert (await response.text()).startswith("<svg")


async def test_connects_and_disconnects_are_logged_with_id_code_and_duration(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with run_gateway(settings_for(market)) as gateway:
        ws = await gateway.session.ws_connect(gateway.ws_url)
        client_id = (await ws.receive_json(timeout=5))["client_id"]
        await ws.close(code=4000)

        def logged() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if f"client disconnected client_id={client_id}" in r.getMessage()
            ]

        async def disconnect_logged() -> bool:  # the server notices the close on its own time
            return bool(logged())

        await poll_until(disconnect_logged)
    (line,) = logged()
    assert " code=4000 " in line and re.search(r"duration=\d+\.\ds$", line), line
    assert any(f"client connected client_id={client_id}" in r.getMessage() for r in caplog.records)


async def test_cors_allows_only_configured_origins(gateway: GatewayUnderTest) -> None:
    allowed = {"Origin": "http://localhost:3000"}
    async with gateway.session.get(gateway.base_url + "/health", headers=allowed) as response:
        assert response.headers.get("access-control-allow-origin") == "http://localhost:3000"
    refused = {"Origin": "http://evil.example"}
    async with gateway.session.get(gateway.base_url + "/health", headers=refused) as response:
        assert "access-control-allow-origin" not in response.headers
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    async with gateway.session.options(gateway.base_url + "/health", headers=preflight) as response:
        assert response.status == 400


async def test_clients_are_counted_and_released_on_abrupt_close(gateway: GatewayUnderTest) -> None:
    clients = [await gateway.connect() for _ in range(5)]
    for client in clients:
        await client.subscribe("AAPL")
    assert (await gateway.health())["clients"] == 5
    for client in clients:
        # Drop the TCP connection without a closing handshake.
        transport = client.ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()

    async def all_gone() -> bool:
        health = await gateway.health()
        return bool(health["clients"] == 0)

    await poll_until(all_gone)
    assert (await gateway.health())["symbols"] == []


async def test_client_closing_mid_stream_does_not_disturb_others(
    market: Market, gateway: GatewayUnderTest
) -> None:
    leaving, staying = await gateway.connect(), await gateway.connect()
    await leaving.subscribe("AAPL")
    await staying.subscribe("AAPL")
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await leaving.ws.close()
    for price in (1.0, 2.0, 3.0):
        await market.simulator.send_trades([trade("AAPL", price)])
        assert (await staying.expect("price_update"))["data"]["price"] == price
    assert staying.ws.closed is False


async def test_fast_path_is_used_where_safe_and_deflate_falls_back(market: Market) -> None:
    async with run_gateway(settings_for(market), ws_per_message_deflate=True) as gateway:
        plain = await gateway.connect()
        compressed = await gateway.connect(compress=15)  # negotiates permessage-deflate
        health = await gateway.health()
        assert health["clients"] == 2 and health["clients_fast_path"] == 1
        for client in (plain, compressed):
            await client.wait_upstream_connected()
            await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 150.25)])
        for client in (plain, compressed):
            assert await client.expect("price_update") == price_update("AAPL", 150.25)


async def test_metrics_scrape(market: Market, gateway: GatewayUnderTest) -> None:
    client = await gateway.connect()
    await client.subscribe("AAPL")
    await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
    await market.simulator.send_trades([trade("AAPL", 8.0), trade("AAPL", 8.5)])
    await client.expect("price_update")
    await client.expect("price_update")
    async with gateway.session.get(gateway.base_url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["gateway_clients"] == 1
    assert samples["gateway_upstream_symbols"] == 1
    assert samples['gateway_upstream_state{state="connected"}'] == 1
    assert samples['gateway_upstream_state{state="reconnecting"}'] == 0
    assert samples["gateway_upstream_trades_total"] == 2
    assert samples["gateway_price_updates_sent_total"] == 2
    assert samples["gateway_handoff_seconds_count"] == 1
    for name in (
        "gateway_conflated_updates_total",
        "gateway_slow_consumer_disconnects_total",
        "gateway_upstream_reconnects_total",
        "gateway_upstream_messages_total",
    ):
        assert name in samples, name
