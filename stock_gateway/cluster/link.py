"""`RedisLink`: a cluster process's connection to Redis and the names of its keys.

Every part of the cluster package reaches Redis through one link, built first, so the
parts can be built whole in any order: `client()` is the current connection (remade by
`reconnect()` after the relay restarts), `key("trades", "AAPL")` is
`{prefix}:trades:AAPL`; `text` and `as_bytes` read what Redis returns. This module
never stores anything itself.
"""

from __future__ import annotations

import redis.asyncio as redis


class RedisLink:
    def __init__(self, url: str, prefix: str = "stockgw") -> None:
        self._url = url
        self._prefix = prefix
        self._client = self._connect()
        self._closed = False

    def key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def client(self) -> redis.Redis:
        return self._client

    def reconnect(self) -> None:
        """A fresh connection if the last one was closed (a supervised restart)."""
        if self._closed:
            self._client, self._closed = self._connect(), False

    async def close(self) -> None:
        self._closed = True
        await self._client.aclose()

    def _connect(self) -> redis.Redis:
        return redis.from_url(
            self._url, socket_timeout=2, socket_connect_timeout=2, decode_responses=False
        )


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
