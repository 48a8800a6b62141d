"""Plausible prices for the simulator: rough real-world levels for well-known symbols,
and a stable pseudo-random level for any other symbol. Constants only; no I/O."""

from __future__ import annotations

import zlib

# Rough real-world prices so the demo looks like a market; other symbols get a
# stable pseudo-random price derived from their name.
REFERENCE_PRICES = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "NVDA": 120.0,
    "AMZN": 185.0,
    "GOOGL": 170.0,
    "META": 500.0,
    "TSLA": 240.0,
    "BRK.B": 410.0,
    "BINANCE:BTCUSDT": 65000.0,
    "BINANCE:ETHUSDT": 3200.0,
    "OANDA:EUR_USD": 1.08,
}


def reference_price(symbol: str) -> float:
    if symbol in REFERENCE_PRICES:
        return REFERENCE_PRICES[symbol]
    return 10.0 + zlib.crc32(symbol.encode()) % 49000 / 100.0
