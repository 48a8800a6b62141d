"""A Finnhub-compatible market simulator (WebSocket and REST, market sessions)
for demo mode, tests and benchmarks: `python -m stock_gateway.simulator`.

It must never import the gateway: it stands in for Finnhub.
"""
