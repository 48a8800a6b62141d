"""Finnhub as the upstream provider: its REST client (`rest.py`, a `ProviderRest`) and
its REST answers and key redaction (`wire.py`). Its WebSocket is `finnhub_feed.py` at
the top (the spine); the trade messages it reads are market_data/trade_wire.py's.

Only wiring.py (which chooses the provider) and finnhub_feed.py import this package;
the rest of the gateway sees market_data/provider.py and market_data/upstream.py.
Finnhub's *client dialect* (`/`, `/api/v1`) is not the provider and lives with the
other dialects (delivery/, endpoints/).
"""
