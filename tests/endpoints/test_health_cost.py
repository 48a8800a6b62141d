"""`/health` costs the same however many clients are connected: it reads counters kept
as clients come and go, never a look at each client (one socket ioctl each, which let
one address hammering the unpaced `/health` take the whole CPU). `/metrics`, paced per
address, still looks at each for the send queues. The counts stay right throughout."""

from __future__ import annotations

from typing import Any

import pytest

from stock_gateway.delivery.outbox import ClientConnection
from tests.support.helpers import Market, poll_until, run_gateway, settings_for


async def test_health_counts_clients_without_looking_at_each(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = 0
    queued_bytes = ClientConnection.queued_bytes

    def counted(client: ClientConnection) -> int:
        nonlocal looks
        looks += 1
        return queued_bytes(client)

    monkeypatch.setattr(ClientConnection, "queued_bytes", counted)
    async with run_gateway(settings_for(market)) as gateway:
        finnhub_url = gateway.ws_url.removesuffix("/ws") + "/"
        ws_clients = [await gateway.connect() for _ in range(30)]
        finnhub_clients = [await gateway.session.ws_connect(finnhub_url) for _ in range(10)]
        # (a `/` client says nothing on connecting: /health tells when all are in)

        async def all_in() -> bool:
            return bool((await gateway.health())["clients"] == 40)

        await poll_until(all_in)
        looks = 0
        health: dict[str, Any] = await gateway.health()
        assert looks == 0, f"/health looked at {looks} clients"
        assert health["clients_by_dialect"] == {"ws": 30, "finnhub": 10}
        assert health["clients_fast_path"] == 40
        async with gateway.session.get(gateway.base_url + "/metrics") as response:
            metrics = await response.text()
        assert looks == 40  # /metrics does: the send queues' bytes
        assert "gateway_clients_fast_path 40.0" in metrics
        assert 'gateway_clients_by_dialect{dialect="finnhub"} 10.0' in metrics
        for client in ws_clients[:10]:
            await client.ws.close()
        for ws in finnhub_clients[:5]:
            await ws.close()

        async def counted_down() -> bool:
            return bool((await gateway.health())["clients"] == 25)

        await poll_until(counted_down)
        health = await gateway.health()
        assert health["clients_by_dialect"] == {"ws": 20, "finnhub": 5}
        assert health["clients_fast_path"] == 25
        for ws in finnhub_clients[5:]:
            await ws.close()
        for client in ws_clients[10:]:
            await client.ws.close()

        async def none_left() -> bool:
            return bool((await gateway.health())["clients"] == 0)

        await poll_until(none_left)
        health = await gateway.health()
        assert health["clients_by_dialect"] == {} and health["clients_fast_path"] == 0
