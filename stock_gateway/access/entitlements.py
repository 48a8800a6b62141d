"""What a client may subscribe to: `SymbolPatterns` (an allow-list of symbols and
patterns, from `SYMBOLS_ALLOWED` or a token's claims) and `Entitlements` (a signed
token's symbols and per-client cap). Pure values: no I/O, no state.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class SymbolPatterns:
    """An allow-list: exact symbols and `fnmatch` patterns (`BINANCE:*`, `OANDA:EUR_*`)."""

    def __init__(self, entries: Iterable[str]) -> None:
        cleaned = [entry.strip().upper() for entry in entries if entry.strip()]
        self._exact = {entry for entry in cleaned if not any(c in entry for c in "*?[")}
        self._patterns = [entry for entry in cleaned if entry not in self._exact]

    def __contains__(self, symbol: object) -> bool:
        if not isinstance(symbol, str):
            return False
        return symbol in self._exact or any(fnmatch.fnmatchcase(symbol, p) for p in self._patterns)

    def __len__(self) -> int:
        return len(self._exact) + len(self._patterns)

    @classmethod
    def from_setting(cls, value: str) -> SymbolPatterns | None:
        """`SYMBOLS_ALLOWED`: empty (None: anything), a comma-separated list, or `@path`
        to a file with one entry per line (`#` starts a comment)."""
        value = value.strip()
        if not value:
            return None
        if value.startswith("@"):
            lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
            return cls(line.split("#", 1)[0] for line in lines)
        return cls(value.split(","))


@dataclass(frozen=True)
class Entitlements:
    """What a user's signed token lets it subscribe to (access/tokens.py): symbols or patterns,
    and a lower per-client cap. None: the server's own limits."""

    symbols: SymbolPatterns | None = None
    max_symbols: int | None = None

    def allow(self, symbol: str) -> bool:
        return self.symbols is None or symbol in self.symbols

    def symbol_cap(self, server_cap: int) -> int:
        return server_cap if self.max_symbols is None else min(server_cap, self.max_symbols)


UNRESTRICTED = Entitlements()  # no token, or a token without entitlement claims
