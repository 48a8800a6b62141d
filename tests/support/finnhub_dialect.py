"""Helpers of the Finnhub dialect tests: the gateway's Finnhub-compatible URL, and
waiting until the gateway knows the market."""

from __future__ import annotations

from tests.support.helpers import (
    GatewayUnderTest,
    poll_until,
)


def finnhub_url(gateway: GatewayUnderTest, query: str = "") -> str:
    return gateway.ws_url.removesuffix("/ws") + (f"/?{query}" if query else "/")


async def market_known(gateway: GatewayUnderTest) -> None:
    async def known() -> bool:
        return (await gateway.health())["market"] is not None

    await poll_until(known)
