"""Building the running gateway from its settings: every part, who feeds whom, and
which core tasks the `Supervisor` owns.

```
FinnhubFeed --trades--> Hub --frames--> ClientConnection (per client)
    ^                    |  ^
    |  SymbolInterest <--+  +-- QuoteService <-- FinnhubRest --> MarketWatch --> Hub
    +-- (cluster mode: Cluster leads the feed, relays trades and quotes over Redis)
```

`start(settings, stack)` builds the parts, registers their clean-up on `stack` (the
lifespan's), starts the core tasks and returns `Running`. It never serves a request.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from access.admission import Admission
from access.capacity import SymbolPatterns, UpstreamCapacity
from bars.book import BarBook
from bars.delivery import BarDelivery
from cluster.bars import MirrorBars, StoredBars
from cluster.node import Cluster
from cluster.rest import ClusterQuoteSource, RedisBudget
from endpoints.ws_session import ClientSessions
from finnhub_feed import Backoff, FinnhubFeed
from hub import Hub, Observer, send_refusals
from market_data.finnhub_rest import CallBudget, FinnhubRest, SlidingWindowBudget
from market_data.market_watch import MarketWatch
from market_data.model import SymbolInterest
from market_data.quotes import QuoteService, QuoteSource
from runtime.logs import get_logger
from runtime.supervisor import Supervisor
from server.guard import ConnectionGuard, ConnectionLimits
from settings import Settings
from simulator.market import MarketSimulator, serve
from simulator.market import rest_url as simulator_rest_url

logger = get_logger(__name__)

DEMO_TOKEN = "demo"


@dataclass
class Running:
    """What exists while the app is up: built by `start`, torn down with its stack."""

    hub: Hub
    feed: FinnhubFeed
    rest: FinnhubRest
    market: MarketWatch
    sessions: ClientSessions
    supervisor: Supervisor
    admission: Admission
    guard: ConnectionGuard
    started_at: float
    cluster: Cluster | None = None

    def cluster_health(self) -> dict[str, object]:
        cluster = self.cluster
        if cluster is None:
            return {}
        return {
            "cluster": "degraded" if cluster.degraded else "ok",
            "role": cluster.role,
            "node": cluster.node,
            "lease_holder": cluster.lease_holder,
            "cluster_nodes": cluster.nodes,
            "cluster_symbols": len(cluster.cluster_symbols),
        }


async def start(settings: Settings, stack: AsyncExitStack, handoff: Observer) -> Running:
    ws_url, rest_url, key = (
        settings.finnhub_ws_url,
        settings.finnhub_rest_url,
        settings.finnhub_api_key,
    )
    if settings.demo:
        # Demo mode means simulated prices, whatever else is configured: /health says
        # "demo": true, so a key (say, left in .env) must not quietly stream the real feed.
        if key:
            logger.warning(
                "DEMO MODE: FINNHUB_API_KEY is set (environment or .env) but ignored in demo "
                "mode; unset DEMO and drop --demo (./dev run passes it) for the real feed"
            )
        market_simulator = MarketSimulator(
            rate=settings.demo_trade_rate, session=settings.demo_session
        )
        ws_url = await stack.enter_async_context(serve(market_simulator))
        rest_url, key = simulator_rest_url(ws_url), DEMO_TOKEN
        logger.warning(
            "DEMO MODE: prices are SIMULATED by the simulator package at %s (market %s); "
            "the live page is /demo on this server",
            ws_url,
            settings.demo_session,
        )
    wanted = SymbolInterest()  # what this process's clients want
    feed = FinnhubFeed(
        ws_url,
        key,
        # In cluster mode the feed follows the cluster-wide union instead.
        wanted if not settings.redis_url else SymbolInterest(),
        backoff=Backoff(settings.reconnect_initial_delay, settings.reconnect_max_delay),
        reset_backoff_after=settings.reconnect_reset_after,
        idle_timeout=settings.upstream_idle_timeout,
        handshake_timeout=settings.upstream_handshake_timeout,
        subscribe_rate=settings.upstream_subscribe_rate,
        subscribe_burst=settings.upstream_subscribe_burst,
        trade_max_age=settings.trade_max_age,
        trade_max_ahead=settings.trade_max_ahead,
    )
    capacity = UpstreamCapacity(
        wanted,
        max_symbols=settings.max_upstream_symbols,
        max_per_owner=settings.max_symbols_per_address,
        allowed=SymbolPatterns.from_setting(settings.symbols_allowed),
        linger=settings.symbol_linger_seconds,
        reject_for=settings.rejected_symbol_seconds,
    )
    stack.callback(capacity.close)
    cluster = None
    if settings.redis_url:
        # The feed runs only while this process holds the lease; trades reach the hub
        # through Redis, already encoded.
        cluster = Cluster(
            settings.redis_url,
            wanted,
            feed,
            prefix=settings.redis_prefix,
            lease_seconds=settings.leader_lease_seconds,
        )
    budget: CallBudget = (
        SlidingWindowBudget(settings.finnhub_rest_rate)
        if cluster is None
        else RedisBudget(cluster.client, cluster.key("rest-calls"), settings.finnhub_rest_rate)
    )
    rest = await stack.enter_async_context(FinnhubRest(rest_url, key, budget))
    source: QuoteSource = (
        rest
        if cluster is None
        else ClusterQuoteSource(cluster.client, cluster.key, rest, ttl=settings.quote_ttl)
    )
    quotes = QuoteService(
        source,
        ttl=settings.quote_ttl,
        wait=settings.quote_wait,
        per_owner_per_minute=settings.quote_requests_per_address,
    )
    hub = Hub(
        capacity,
        outbox_size=settings.client_outbox_size,
        slow_consumer_timeout=settings.slow_consumer_timeout,
        max_symbols_per_client=settings.max_symbols_per_client,
        handoff_observer=handoff,
        quotes=quotes if settings.rest_enabled else None,
    )
    hub.bars = BarDelivery(
        BarBook(history=settings.bar_history, grace=settings.bar_grace),
        hub,
        send_refusals,
        aggregating=cluster is None,  # on a cluster the leader aggregates (cluster.py)
    )
    market = MarketWatch(
        rest,
        hub.market_changed,
        exchange=settings.market_exchange,
        interval=settings.market_status_interval,
    )
    guard = ConnectionGuard(connection_limits(settings))
    logger.info("accepting at most %d open sockets", guard.max_connections)
    supervisor = await stack.enter_async_context(Supervisor())
    supervisor.start("broadcaster", hub.broadcast_forever)
    supervisor.start("clock", hub.clock.run)
    if settings.rest_enabled:
        supervisor.start("quotes", quotes.run)
    if cluster is not None:
        cluster.bars = MirrorBars(StoredBars(cluster.client, cluster.key), hub.bars)
        hub.bars.history_ready = cluster.bars.wait_loaded
        cluster.bar_history, cluster.bar_grace = settings.bar_history, settings.bar_grace
        cluster.quotes = quotes
        cluster.market = market if settings.rest_enabled else None
        supervisor.start("cluster", lambda: cluster.run(hub))
    else:
        supervisor.start("feed", lambda: feed.run(hub))
        supervisor.start("bars", hub.bars.run)
        if settings.rest_enabled:
            supervisor.start("market", market.run)
    admission = Admission(settings)
    stack.push_async_callback(admission.authenticator.close)
    sessions = ClientSessions(settings, hub, admission)
    return Running(
        hub, feed, rest, market, sessions, supervisor, admission, guard, time.monotonic(), cluster
    )


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        handshake_timeout=settings.handshake_timeout,
        max_request_header_bytes=settings.max_request_header_bytes,
        max_connections=settings.max_connections,
        max_pending_per_address=settings.max_pending_per_address,
        frame_rate=settings.client_frame_rate,
        frame_burst=settings.client_frame_burst,
        max_unread_output=settings.max_unread_output,
    )
