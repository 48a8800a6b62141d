"""Helpers of the Server-Sent Events tests: a stream opened and read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from tests.support.contract import assert_server_message
from tests.support.helpers import GatewayUnderTest


@asynccontextmanager
async def opened(
    gateway: GatewayUnderTest, query: str, **headers: str
) -> AsyncIterator[EventStream]:
    async with gateway.session.get(
        f"{gateway.base_url}/stream?{query}", headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        yield EventStream(response)


class EventStream:
    """An SSE client: yields (event, data) pairs, and the comments it saw."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        kind, data = "message", ""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    message = orjson.loads(data)
                    assert message["type"] == kind  # the event is named after the message
                    assert_server_message(message)
                    return kind, message

    async def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                seen, message = await self.next()
                if seen == kind:
                    return message
