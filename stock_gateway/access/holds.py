"""Whether a client may hold one more symbol, for prices or bars (counted once however
many ways it follows it): within its token's entitlements, the per-client cap
(`MAX_SYMBOLS_PER_CLIENT`, or the token's lower `max_symbols`), then the upstream's
capacity and the owner's fair share (`UpstreamCapacity`).

The hub and the bar delivery both hold symbols through one `SymbolHolds`; what they
refuse in one request is grouped by `RefusedSymbols` into one error per reason. This
module never sends anything itself.
"""

from __future__ import annotations

from typing import Protocol

from stock_gateway import protocol
from stock_gateway.access.capacity import UpstreamCapacity
from stock_gateway.access.entitlements import Entitlements
from stock_gateway.access.refusal import Refusal
from stock_gateway.protocol import ErrorCode


class Holder(Protocol):
    """A client as the holds see it."""

    owner: str  # whose fair share its symbols use: its address, or its user
    entitlements: Entitlements

    def wants(self, symbol: str) -> bool: ...

    def wanted_count(self) -> int: ...


class SymbolHolds:
    def __init__(self, capacity: UpstreamCapacity, *, max_symbols_per_client: int) -> None:
        self.capacity = capacity
        self._max_symbols_per_client = max_symbols_per_client

    def cap_for(self, entitlements: Entitlements) -> int:
        return entitlements.symbol_cap(self._max_symbols_per_client)

    def hold(self, client: Holder, symbol: str) -> Refusal | None:
        """Count `symbol` as wanted by `client` (once, for prices or bars); else why not."""
        if client.wants(symbol):
            return None
        entitlements = client.entitlements
        if not entitlements.allow(symbol):
            return FORBIDDEN
        cap = self.cap_for(entitlements)
        if client.wanted_count() >= cap:
            return Refusal(f"a client may hold at most {cap} symbols", "too_many_symbols")
        refusal = self.capacity.refusal(symbol, client.owner)
        if refusal is not None:
            return refusal
        self.capacity.join(symbol, client.owner)
        return None

    def release(self, client: Holder, symbol: str) -> None:
        """`client` wants `symbol` for nothing any more: the upstream may let it go."""
        if not client.wants(symbol):
            self.capacity.leave(symbol, client.owner)


FORBIDDEN = Refusal(
    "your token does not entitle you to these symbols", "forbidden_symbol", status=403
)


class RefusedSymbols:
    """The symbols one request was refused, grouped by error code."""

    def __init__(self) -> None:
        self._by_code: dict[ErrorCode, tuple[str, list[str]]] = {}

    def add(self, refusal: Refusal, symbol: str) -> None:
        code = refusal.code or "invalid_message"
        self._by_code.setdefault(code, (refusal.reason, []))[1].append(symbol)

    def items(self) -> list[tuple[ErrorCode, str, list[str]]]:
        """Each code, its first reason and its symbols, in a stable order (what an
        encoder says of them: delivery/encoders.py)."""
        return [
            (code, *self._by_code[code]) for code in protocol.ERROR_CODES if code in self._by_code
        ]
