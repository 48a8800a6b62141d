"""Which upstream the gateway dials: Finnhub's, as the settings name it, or in demo mode
the simulator (simulator/), started in this process for the lifespan's `stack`.

Demo mode is loud about itself: prices are simulated, and a Finnhub key left in the
settings is ignored (and said so), never quietly used for the real feed. This module
only chooses and starts; wiring.py builds the parts that dial it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from stock_gateway.runtime.logs import get_logger
from stock_gateway.settings import Settings
from stock_gateway.simulator.market import MarketSimulator, serve
from stock_gateway.simulator.market import rest_url as simulator_rest_url

logger = get_logger(__name__)

DEMO_TOKEN = "demo"  # the simulator takes any key; this one never leaves the process


async def upstream_endpoints(settings: Settings, stack: AsyncExitStack) -> tuple[str, str, str]:
    """Finnhub's WebSocket and REST addresses and the key; in demo mode the simulator's,
    started in this process."""
    if not settings.demo:
        return settings.finnhub_ws_url, settings.finnhub_rest_url, settings.finnhub_api_key
    # Demo mode means simulated prices, whatever else is configured: /health says
    # "demo": true, so a key (say, left in .env) must not quietly stream the real feed.
    if settings.finnhub_api_key:
        logger.warning(
            "DEMO MODE: FINNHUB_API_KEY is set (environment or .env) but ignored in demo "
            "mode; unset DEMO and drop --demo (./dev run passes it) for the real feed"
        )
    market_simulator = MarketSimulator(rate=settings.demo_trade_rate, session=settings.demo_session)
    ws_url = await stack.enter_async_context(serve(market_simulator))
    logger.warning(
        "DEMO MODE: prices are SIMULATED by the simulator package at %s (market %s); "
        "the live page is /demo on this server",
        ws_url,
        settings.demo_session,
    )
    return ws_url, simulator_rest_url(ws_url), DEMO_TOKEN
