"""`python -m stock_gateway.simulator`: the simulator on its own, as a stand-in Finnhub."""

from __future__ import annotations

import argparse
import asyncio
import logging
from contextlib import suppress

from stock_gateway.market_data.model import SESSIONS
from stock_gateway.simulator.market import MESSAGE_INTERVAL_SECONDS, MarketSimulator, serve
from stock_gateway.simulator.skew import SKEWS, ranked

logger = logging.getLogger("simulator")


async def _main(args: argparse.Namespace) -> None:
    simulator = MarketSimulator(
        rate=args.rate,
        ping_interval=args.ping_interval,
        tick=args.tick,
        sequenced=args.sequenced,
        max_symbols=args.max_symbols,
        session=args.session,
        rest_rate=args.rest_rate,
        rest_window=args.rest_window,
        skew=args.skew,
        universe=tuple(ranked(args.universe)),
        zipf_exponent=args.zipf_exponent,
    )
    host, port, rate = args.host, args.port, args.rate
    async with serve(simulator, host, port) as url:
        logger.info("simulated Finnhub listening on %s (rate %.0f trades/s)", url, rate)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A Finnhub-compatible market simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=20.0, help="trades per second per connection")
    parser.add_argument("--ping-interval", type=float, default=60.0)
    parser.add_argument("--max-symbols", type=int, default=50, help="per connection, as Finnhub")
    parser.add_argument(
        "--tick", type=float, default=MESSAGE_INTERVAL_SECONDS, help="seconds between frames"
    )
    parser.add_argument(
        "--sequenced", action="store_true", help="benchmark mode: volume = per-symbol sequence"
    )
    parser.add_argument("--session", choices=SESSIONS, default="regular", help="market hours")
    parser.add_argument("--rest-rate", type=float, default=60.0, help="REST calls per window")
    parser.add_argument(
        "--rest-window", type=float, default=60.0, help="seconds --rest-rate counts over"
    )
    parser.add_argument(
        "--skew", choices=SKEWS, default="none", help="zipf: the whole market trades, skewed"
    )
    parser.add_argument("--universe", default="", help="--skew zipf: symbols, most traded first")
    parser.add_argument("--zipf-exponent", type=float, default=1.0, help="--skew zipf's s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


main()
