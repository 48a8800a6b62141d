"""`Refusal`: the one answer to "may this client do this?" when it is no.

Every check of the access layer (admission of a connection or a request, a symbol's
hold, the upstream's capacity, a quota) says no with a `Refusal`, and every endpoint
turns it into its own shape: an `error` message with `code`, an HTTP answer with
`status` (and `Retry-After`), or a WebSocket close with `close_code`. This module holds
the type and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from stock_gateway.protocol import ErrorCode


@dataclass(frozen=True)
class Refusal:
    reason: str  # a sentence for the client, naming the limit
    code: ErrorCode | None = None  # the protocol's error code, where the client gets one
    status: int = 429  # the HTTP status of a refused request or handshake
    close_code: int | None = None  # the WebSocket close code, where it ends a connection
    retry_after: int | None = None  # seconds, where waiting helps

    def headers(self) -> dict[str, str] | None:
        """The HTTP headers that go with it (`Retry-After`)."""
        return {"Retry-After": str(self.retry_after)} if self.retry_after else None

    def body(self) -> dict[str, str]:
        """The JSON body of an HTTP refusal."""
        return (
            {"error": self.reason}
            if self.code is None
            else {
                "error": self.reason,
                "code": self.code,
            }
        )
