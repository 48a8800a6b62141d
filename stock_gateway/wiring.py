"""Building the running gateway from its settings: every part, who feeds whom, and
which core tasks the `Supervisor` owns.

```
PlannedUpstream --trades--> Relay --frames--> Hub --frames--> ClientConnection
 (FinnhubFeed: the socket) (LocalRelay, or      |  ^
    ^    |                  RedisRelay on a     |  +-- QuoteService <-- FinnhubRest
    |    +-- feeds, polls --> FeedNotices ------+-------^ (polled quotes)
    +-- SymbolInterest <-- UpstreamCapacity <-- SymbolHolds (prices and bars)
```

The `PlannedUpstream` plans which wanted symbols ride the socket's few slots (live, or
sampled in turns) and which are polled by REST (market_data/feed_plan.py).

Each part is built whole, with every collaborator it needs, in dependency order: no
part is handed one after construction. Single process or cluster is the choice of one
relay (and of the shared REST budget and quote cache that go with it).

`start(settings, stack)` builds the parts, registers their clean-up on `stack` (the
lifespan's), starts the core tasks and returns `Running`. It never serves a request.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial

from finnhub_feed import FinnhubFeed
from hub import Hub
from stock_gateway.access.admission import Admission
from stock_gateway.access.capacity import UpstreamCapacity
from stock_gateway.access.entitlements import SymbolPatterns
from stock_gateway.access.history_budget import HistoryBudget
from stock_gateway.access.holds import SymbolHolds
from stock_gateway.bars.book import BarBook
from stock_gateway.bars.outages import Outages
from stock_gateway.bars.startup import open_recorder, warn_if_histories_outgrow_unread_output
from stock_gateway.cluster.bars import MirrorBars
from stock_gateway.cluster.feeds import ClusterFeeds, FeedMap
from stock_gateway.cluster.link import RedisLink
from stock_gateway.cluster.redis_relay import RedisRelay
from stock_gateway.cluster.rest import ClusterQuoteSource, RedisBudget, RedisResponseCache
from stock_gateway.cluster.stored_bars import StoredBars
from stock_gateway.delivery.bar_delivery import BarDelivery
from stock_gateway.delivery.feed_notices import FeedNotices
from stock_gateway.delivery.outbox import OutboxLimits
from stock_gateway.delivery.quote_delivery import Feeds
from stock_gateway.delivery.snapshots import LatestPrices
from stock_gateway.delivery.stats import Observer
from stock_gateway.delivery.subscribers import Subscribers
from stock_gateway.endpoints.finnhub_ws import FinnhubSessions
from stock_gateway.endpoints.ws_session import ClientSessions
from stock_gateway.finnhub.addresses import finnhub_addresses
from stock_gateway.finnhub.rest import FinnhubRest
from stock_gateway.market_data.feed_plan import FeedPlanner, PlanLimits
from stock_gateway.market_data.market_watch import MarketWatch
from stock_gateway.market_data.model import SymbolInterest
from stock_gateway.market_data.planned_upstream import PlannedUpstream
from stock_gateway.market_data.provider import CallBudget, ProviderRest
from stock_gateway.market_data.quote_polls import poll_pace
from stock_gateway.market_data.quotes import QuoteService, QuoteSource
from stock_gateway.market_data.rest_budget import WINDOW_SLACK, SlidingWindowBudget
from stock_gateway.market_data.rest_mirror import MemoryResponseCache, ResponseCache, RestMirror
from stock_gateway.market_data.upstream import Upstream
from stock_gateway.relay.base import Relay
from stock_gateway.relay.local import LocalRelay
from stock_gateway.rest_shares import rest_shares
from stock_gateway.runtime.allowances import Allowances
from stock_gateway.runtime.backoff import Backoff
from stock_gateway.runtime.logs import get_logger
from stock_gateway.runtime.supervisor import Supervisor
from stock_gateway.server.guard import ConnectionGuard
from stock_gateway.settings import Settings
from stock_gateway.socket_limits import connection_limits

logger = get_logger(__name__)


@dataclass
class Running:
    """What exists while the app is up: built by `start`, torn down with its stack."""

    hub: Hub
    upstream: PlannedUpstream
    relay: Relay
    rest: ProviderRest
    mirror: RestMirror
    sessions: ClientSessions
    finnhub_sessions: FinnhubSessions
    supervisor: Supervisor
    admission: Admission
    guard: ConnectionGuard
    started_at: float

    def cluster_health(self) -> dict[str, object]:
        view = self.relay.cluster_view()
        return view.health() if view is not None else {}


async def start(settings: Settings, stack: AsyncExitStack, handoff: Observer) -> Running:
    """Build every part with everything it needs, in dependency order; then start the
    core tasks. Single process or cluster is the choice of one relay."""
    link = RedisLink(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
    aggregating = link is None  # on a cluster the leader aggregates bars (cluster/leader.py)

    # What clients want, and who may add a symbol: the upstream follows `wanted` in one
    # process; on a cluster it follows the cluster-wide union instead.
    wanted = SymbolInterest()
    latest = LatestPrices()
    # The aggregating book is blind until the upstream connects: bars overlapping that
    # time say so (`gap`); a mirror's bars carry the leader's flags.
    blind_from = Outages(down_since=int(time.time() * 1000)) if aggregating else None
    book = BarBook(history=settings.bar_history, grace=settings.bar_grace, outages=blind_from)
    warn_if_histories_outgrow_unread_output(settings)

    def released(symbol: str) -> None:  # the upstream stopped carrying `symbol`
        latest.forget(symbol)
        if aggregating:
            book.forget(symbol)  # a cluster's mirror forgets with this process's interest
            if recorder is not None:
                recorder.forget(symbol)

    capacity = UpstreamCapacity(
        wanted,
        max_per_owner=settings.max_symbols_per_address,
        new_per_owner_hour=settings.new_symbols_per_address,
        allowed=SymbolPatterns.from_setting(settings.symbols_allowed),
        linger=settings.symbol_linger_seconds,
        reject_for=settings.rejected_symbol_seconds,
        on_release=released,
    )
    stack.callback(capacity.close)
    holds = SymbolHolds(capacity, max_symbols_per_client=settings.max_symbols_per_client)
    # The provider's REST calls within the key's budget (shared through Redis on a
    # cluster), a margin under the plan.
    shares = rest_shares(settings)  # who may spend how much of it
    window = settings.finnhub_rest_window  # the plan's minute: the span of every share
    budget: CallBudget = (
        SlidingWindowBudget(shares.usable, window, slack=WINDOW_SLACK)
        if link is None
        else RedisBudget(
            link.client, link.key("rest-calls"), shares.usable, window, slack=WINDOW_SLACK
        )
    )
    socket, rest = await _finnhub(settings, stack, budget)
    source: QuoteSource = (
        rest
        if link is None
        else ClusterQuoteSource(
            link.client,
            link.key,
            rest,
            ttl=settings.quote_ttl,
            unknown_ttl=settings.quote_unknown_ttl,
        )
    )
    polls = poll_pace(budget, shares.polls, shares.reserved_polls, window)
    quotes = QuoteService(
        source,
        Allowances.per_minute(settings.quote_requests_per_address),
        ttl=settings.quote_ttl,
        wait=settings.quote_wait,
        unknown_ttl=settings.quote_unknown_ttl,
        window=window,
        lookups_per_minute=shares.lookups,
        refreshes_per_minute=shares.refreshes,
        polls=polls,
    )
    # The REST mirror's forwarded calls (GET /api/v1/...): their answers are kept in
    # this process, or on a cluster in Redis beside the budget.
    answers: ResponseCache = (
        MemoryResponseCache(settings.finnhub_rest_cache_bytes)
        if link is None
        else RedisResponseCache(link.client, link.key, settings.finnhub_rest_cache_bytes)
    )
    rest_mirror = RestMirror(
        rest,
        answers,
        Allowances.per_minute(shares.forwarded_per_address),
        allowed=settings.finnhub_rest_allow,
        wait=settings.finnhub_rest_wait,
        window=window,
        calls_per_minute=shares.forwarded,
    )
    stack.push_async_callback(rest_mirror.aclose)  # before the REST client closes

    # On a cluster only with BAR_STORE_URL (unset: Redis's bounded history alone); the
    # leader writes (cluster/leader.py), every node reads.
    recorder = None
    if link is None or settings.bar_store_url:
        recorder = await open_recorder(settings, stack, book if aggregating else None)
    # On a cluster: the Redis keys of its bars, and this process's copy of them.
    stored_bars = StoredBars(link.client, link.key) if link is not None else None
    bar_mirror = MirrorBars(stored_bars, book) if stored_bars is not None else None
    bars = BarDelivery(
        book,
        holds,
        aggregating=aggregating,
        history_ready=bar_mirror.wait_loaded if bar_mirror is not None else None,
        budget=HistoryBudget(
            settings.history_bytes_per_client,
            settings.history_bytes_per_address,
            settings.history_read_bytes_per_minute,
        ),
        recorder=recorder,
        history=settings.bar_history,
    )
    planner = FeedPlanner(
        PlanLimits(
            socket_slots=settings.max_upstream_symbols,
            sampled_slots=settings.sampled_slots,
            turn_seconds=settings.sample_turn_seconds,
            changes_per_minute=settings.upstream_changes_per_minute,
            polls_per_second=polls.per_second if settings.rest_enabled else 0.0,
        ),
        time.monotonic,
    )
    subscribers = Subscribers()  # symbol -> clients: the hub keeps it, the notices read it
    # On a cluster, clients hear the leader's plan as this node learned it (cluster/feeds.py).
    feed_map = FeedMap() if link is not None else None
    feeds_seen: Feeds = planner if feed_map is None else feed_map  # what clients are told
    notices = FeedNotices(subscribers.of, latest, feeds_seen.feed_of)
    hub = Hub(
        holds,
        latest,
        subscribers,
        joined=notices.joined,
        feeds=feeds_seen,
        bars=bars,
        quotes=quotes if settings.rest_enabled else None,
        outbox=OutboxLimits(
            settings.client_outbox_size,
            settings.client_outbox_bytes,
            settings.slow_consumer_timeout,
        ),
        max_batch_bytes=settings.max_batch_bytes,
        handoff_observer=handoff,
    )
    feeds = (
        ClusterFeeds(link, notices, feed_map, capacity.demand, planner.feeds)
        if link is not None and feed_map is not None
        else None
    )
    quotes.on_polled(notices.polled if feeds is None else feeds.polled)
    quotes.on_quoted(lambda symbol, _quote: planner.priced(symbol))  # a subscriber's too
    # One process: this process's wanted symbols; on a cluster the leader plans the union
    # (cluster/leader.py) from every node's demand, for every node (cluster/feeds.py).
    upstream = PlannedUpstream(
        socket,
        planner,
        wanted if link is None else SymbolInterest(),
        demand=capacity.demand if feeds is None else feeds.demand,
        on_feeds=notices.feeds_changed if feeds is None else feeds.planned,
        poll=quotes.poll if settings.rest_enabled else lambda symbols: None,
    )
    watch_market = partial(
        MarketWatch,
        rest,
        exchange=settings.market_exchange,
        interval=settings.market_status_interval,
    )
    relay: Relay = (
        LocalRelay(
            upstream,
            hub,
            bars=bars,
            quotes=quotes,
            market=watch_market(hub.market_changed) if settings.rest_enabled else None,
        )
        if link is None or feeds is None
        else RedisRelay(
            link,
            upstream,
            hub,
            feeds,
            lease_seconds=settings.leader_lease_seconds,
            quotes=quotes,
            market_watch=watch_market if settings.rest_enabled else None,
            bars=bars,
            bar_mirror=bar_mirror,
            stored_bars=stored_bars,
            recorder=recorder,
            bar_history=settings.bar_history,
            bar_grace=settings.bar_grace,
        )
    )

    # The request side.
    guard = ConnectionGuard(connection_limits(settings))
    logger.info("accepting at most %d open sockets", guard.max_connections)
    admission = Admission(settings)
    stack.push_async_callback(admission.authenticator.close)
    sessions = ClientSessions(settings, hub, admission)
    finnhub_sessions = FinnhubSessions(settings, hub, admission)

    # A relay's duties that restart themselves count as down while they crash-loop.
    supervisor = await stack.enter_async_context(Supervisor(watched=[relay.failing]))
    supervisor.start("broadcaster", hub.broadcast_forever)
    supervisor.start("clock", hub.clock.run)
    if recorder is not None and aggregating:  # on a cluster, a duty of the leader's
        supervisor.start("bar-store", recorder.run)
    if settings.rest_enabled:
        supervisor.start("quotes", quotes.run)
    for name, duty in relay.duties().items():
        supervisor.start(name, duty)
    return Running(
        hub,
        upstream,
        relay,
        rest,
        rest_mirror,
        sessions,
        finnhub_sessions,
        supervisor,
        admission,
        guard,
        time.monotonic(),
    )


async def _finnhub(
    settings: Settings, stack: AsyncExitStack, budget: CallBudget
) -> tuple[Upstream, ProviderRest]:
    """The provider, Finnhub (in demo mode the simulator): its socket, following the
    symbols the planner puts on it, and its REST client within `budget`."""
    ws_url, rest_url, key = await finnhub_addresses(settings, stack)
    socket = FinnhubFeed(
        ws_url,
        key,
        SymbolInterest(),  # what the planner puts on the socket
        max_symbols=settings.max_upstream_symbols,
        backoff=Backoff(settings.reconnect_initial_delay, settings.reconnect_max_delay),
        reset_backoff_after=settings.reconnect_reset_after,
        idle_timeout=settings.upstream_idle_timeout,
        handshake_timeout=settings.upstream_handshake_timeout,
        subscribe_rate=settings.upstream_subscribe_rate,
        subscribe_burst=settings.upstream_subscribe_burst,
        trade_max_age=settings.trade_max_age,
        trade_max_ahead=settings.trade_max_ahead,
    )
    return socket, await stack.enter_async_context(FinnhubRest(rest_url, key, budget))
