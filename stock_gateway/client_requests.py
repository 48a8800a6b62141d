"""What a client asks, read: its symbols normalised to Finnhub's forms (protocol.py's
rule), its delivery options validated, and `ProtocolError` for a message refused. The
endpoints' side of the contract; the frames sent back are protocol.py's."""

from __future__ import annotations

from collections.abc import Mapping

from stock_gateway.protocol import SYMBOL_PATTERN, ErrorCode


class ProtocolError(Exception):
    """A client message we refuse; `code` is the stable error code sent to the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_OPTION_MS = 60_000  # throttle_ms and batch_ms: 0 (off) up to a minute


def normalize_symbol(raw: str) -> str | None:
    """The canonical form of a symbol, or None if it is not a symbol."""
    symbol = raw.strip().upper()
    return symbol if SYMBOL_PATTERN.fullmatch(symbol) else None


def parse_options(values: Mapping[str, object], *, from_query: bool = False) -> dict[str, int]:
    """The `throttle_ms` / `batch_ms` a client gave, validated: JSON integers in a message,
    text digits in a query string; ProtocolError("invalid_options") otherwise."""
    given = {name: values[name] for name in ("throttle_ms", "batch_ms") if name in values}
    if not given:
        raise ProtocolError("invalid_options", "give throttle_ms and/or batch_ms")
    chosen: dict[str, int] = {}
    for name, raw in given.items():
        value = int(raw) if from_query and isinstance(raw, str) and raw.isdigit() else raw
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OPTION_MS:
            raise ProtocolError(
                "invalid_options",
                f"{name} must be a whole number of milliseconds from 0 (off) to {MAX_OPTION_MS}",
            )
        chosen[name] = value
    return chosen


def split_symbols(raw_symbols: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Normalize a request's symbols: (valid ones, deduplicated in order; rejected raw ones)."""
    valid: dict[str, None] = {}
    rejected: list[str] = []
    for raw in raw_symbols:
        symbol = normalize_symbol(raw)
        if symbol is None:
            rejected.append(raw)
        else:
            valid[symbol] = None
    return list(valid), rejected
