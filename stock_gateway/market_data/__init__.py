"""Finnhub's data on the upstream side: its wire format read defensively, the REST
client within the key's budget, quotes, the market session, and the shared model
(`Trade`, `Quote`, `MarketStatus`, `SymbolInterest`).

Nothing here knows about clients, sockets or the hub.
"""
