// Types for stock-client.js, the gateway's browser client (see /docs for the protocol).
//
// The message types below the options are written from asyncapi.yaml, so they say what
// the gateway sends; tests/static/test_typescript.py fails when either changes without the
// other. Everything else here is written by hand, and a test checks that every option
// and method of stock-client.js is declared.

/** A bar interval: `1s`, `1m` or `5m`. */
export type Interval = SubscribeBarsMessage["interval"];
/** A live trade, as `onPrice` gets it (`change`, `change_percent` when the close is known). */
export type PriceData = PriceUpdateMessage["data"];
/** A quote, as `onQuote` gets it: not a live trade (the last close when the market is shut). */
export type QuoteData = QuoteMessage["data"];
/** The upstream's state (Finnhub's side), as the gateway reports it. */
export type UpstreamState = StatusMessage["upstream"];
/** This client's own connection to the gateway. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
export type ErrorCode = ErrorMessage["code"];

export interface ConnectionStatus {
  connection: ConnectionState;
  /** Unknown (null) until the connection's first `status` message. */
  upstream: UpstreamState | null;
}

/** A refused request from the gateway, or `auth_failed` when `getToken` threw. */
export type StockClientError = Omit<ErrorMessage, "type"> & { type?: "error" };

export interface BarState {
  /** The bar closed (else: the open bar so far). */
  final: boolean;
  /** A late trade changed a bar that had already closed. */
  revised: boolean;
}

export interface StockClientOptions {
  /** A live trade. */
  onPrice?: (symbol: string, data: PriceData, feed: Feed) => void;
  /** A quote, sent when a symbol has no live price yet (say the market is closed); never older than its last onPrice. */
  onQuote?: (symbol: string, quote: QuoteData, feed: Feed) => void;
  /** How a symbol it follows is carried changed: "live", "sampled" (delayed) or "polled". */
  onFeed?: (symbol: string, feed: Feed) => void;
  /** The market's session, on connect and whenever it changes. */
  onMarket?: (market: MarketMessage) => void;
  onStatus?: (status: ConnectionStatus) => void;
  onError?: (error: StockClientError) => void;
  /** The history held, once per `subscribeBars` (oldest first; the last may be open). */
  onBars?: (symbol: string, interval: Interval, bars: Bar[]) => void;
  /** A bar: the open one so far (at most once a second), or `final` when it closed. */
  onBar?: (symbol: string, interval: Interval, bar: Bar, state: BarState) => void;
  /** At most one update per symbol this often, the newest; 0 (the default): off. */
  throttleMs?: number;
  /** Updates grouped into one frame at most this often (arriving as `onPrice` calls). */
  batchMs?: number;
  /** A fresh signed token (JWT) for this user: called on every connect and on "expiring". */
  getToken?: () => Promise<string> | string;
  /** Milliseconds between application-level pings (default 20000). */
  pingInterval?: number;
  /** The cap on reconnect delays in milliseconds (default 30000). */
  maxBackoff?: number;
}

/**
 * One connection to the gateway's `/ws`: reconnects with backoff and resubscribes by
 * itself, pings, and refreshes signed tokens.
 */
export declare class StockClient {
  /** Connects at once. `url`: ws:// or wss:// address of /ws. */
  constructor(url: string, options?: StockClientOptions);
  readonly url: string;
  readonly options: StockClientOptions;
  /** The symbols held, remembered across reconnects. */
  readonly symbols: Set<string>;
  /** Bar subscriptions: interval -> symbols. */
  readonly barSymbols: Map<Interval, Set<string>>;
  readonly connection: ConnectionState;
  readonly upstream: UpstreamState | null;
  /** The last `market` message, if any. */
  readonly market: MarketMessage | null;
  /** How each symbol it follows is carried, as the gateway last said (`feed` messages). */
  readonly feeds: Map<string, Feed>;
  /** Follow symbols; remembered across reconnects. */
  subscribe(symbols: string[]): void;
  /** Stop following symbols. */
  unsubscribe(symbols: string[]): void;
  /** Follow symbols' bars in one interval (default `1m`); remembered across reconnects. */
  subscribeBars(symbols: string[], interval?: Interval): void;
  /** Stop following symbols' bars in that interval. */
  unsubscribeBars(symbols: string[], interval?: Interval): void;
  /** Close for good: no more reconnects. */
  close(): void;
  /** Send a message now if connected (and authenticated); otherwise it is dropped. */
  send(message: ClientMessage): void;
  private attempt;
  private closed;
  private socket;
  private pingTimer;
  private reconnectTimer;
  private lastPongAt;
  private openedAt;
  private ready;
  private connect;
  private abandon;
  private ping;
  private scheduleReconnect;
  private fetchToken;
  private refreshToken;
  private receive;
  private setStatus;
}

// ---- BEGIN messages: from asyncapi.yaml by `./dev python -m tests.support.protocol_types`

/**
 * Matches ^[A-Z0-9^][A-Z0-9.:_/^ -]{0,39}$
 */
export type StockSymbol = string;

/**
 * `subscribe`: Follow symbols. Symbols are trimmed and upper-cased, then must be 1-40
 * characters of A-Z 0-9 . : _ / ^ - or space, starting with a letter, a digit or ^.
 * Subscribing twice is harmless. A symbol that already traded is followed at once by its
 * last price_update (a snapshot).
 */
export interface SubscribeMessage {
  action: "subscribe";
  symbols: string[];
}

/**
 * `unsubscribe`: Stop following symbols; unsubscribing a symbol you do not hold is
 * harmless.
 */
export interface UnsubscribeMessage {
  action: "unsubscribe";
  symbols: string[];
}

/**
 * `ping`: Application-level ping (browsers cannot send protocol pings); answered with
 * pong.
 */
export interface PingMessage {
  action: "ping";
}

/**
 * `options`: Choose how price updates arrive on this connection. `throttle_ms`: at most
 * one update per symbol per that many milliseconds, always the newest (conflated, never
 * reordered; never held longer than the interval plus one 10 ms tick). `batch_ms`:
 * updates grouped into one `price_updates` frame at most that often, in arrival order
 * (with a throttle too, the newest per symbol). Each is optional, a whole number from 0
 * (off, the default) to 60000. The same can be given when connecting, as
 * `/ws?throttle_ms=250&batch_ms=100`. Confirmed with `options`; snapshots, quotes and
 * control messages keep their own types and are never delayed.
 */
export interface OptionsMessage {
  action: "options";
  throttle_ms?: number;
  batch_ms?: number;
}

/**
 * `auth`: With signed tokens (JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL): the first
 * message, within AUTH_TIMEOUT seconds, and nothing else before it (unless the token
 * came as `?token=`). Sent again with a fresh token for the same user (`sub`) at any
 * time, typically on `auth` "expiring": the stream goes on with no gap, and the fresh
 * token's entitlements apply from then on.
 */
export interface AuthMessage {
  action: "auth";
  token: string;
}

/**
 * `subscribe_bars`: Follow a symbol's bars (OHLCV candles built by the gateway from the
 * trades it receives) in one interval: `1s`, `1m` or `5m`. The same symbol rules and
 * limits as `subscribe` apply (a symbol counts once per client, for prices or bars, and
 * a symbol wanted only for bars is still carried upstream). Confirmed with a
 * `subscription` carrying the `interval`, then one `bars` message per symbol with the
 * history held, then `bar` messages.
 */
export interface SubscribeBarsMessage {
  action: "subscribe_bars";
  symbols: string[];
  interval: "1s" | "1m" | "5m" | "15m" | "30m" | "1h" | "1d";
}

/**
 * `unsubscribe_bars`: Stop following a symbol's bars in that interval; harmless if not
 * followed.
 */
export interface UnsubscribeBarsMessage {
  action: "unsubscribe_bars";
  symbols: string[];
  interval: "1s" | "1m" | "5m" | "15m" | "30m" | "1h" | "1d";
}

export type ClientMessage =
  | SubscribeMessage
  | UnsubscribeMessage
  | PingMessage
  | OptionsMessage
  | AuthMessage
  | SubscribeBarsMessage
  | UnsubscribeBarsMessage;

/**
 * `connection`: The first message on every connection.
 */
export interface ConnectionMessage {
  type: "connection";
  status: "connected";
  client_id: string;
}

/**
 * `status`: The upstream's state: sent after `connection` and whenever it changes.
 * Clients stay connected through upstream outages; their subscriptions are restored for
 * them.
 */
export interface StatusMessage {
  type: "status";
  upstream: "connecting" | "connected" | "reconnecting" | "unauthorized";
}

/**
 * `subscription`: Confirms a subscribe or an unsubscribe (the symbols in canonical
 * form).
 */
export interface SubscriptionMessage {
  type: "subscription";
  status: "subscribed" | "unsubscribed";
  symbols: StockSymbol[];
  /** only on a bar subscription's confirmation */
  interval?: "1s" | "1m" | "5m" | "15m" | "30m" | "1h" | "1d";
}

/**
 * `price_update`: One upstream trade. `timestamp` is the trade time in Unix
 * milliseconds. When the gateway knows the previous close (from a quote), `change` and
 * `change_percent` against it are added; the seed's fields are always there. A client
 * that falls behind gets only the newest pending update per symbol, never out of order,
 * and one upstream message delivers at most its newest 100 trades per symbol. `feed`
 * says how it came: `live` (the symbol is on the upstream socket) or `sampled` (the
 * symbol takes turns on it, so trades between turns are missed).
 */
export interface PriceUpdateMessage {
  type: "price_update";
  symbol: string;
  data:
    | {
    price: number;
    volume: number;
    /** Unix milliseconds */
    timestamp: number;
    /** price minus the previous close */
    change?: number;
    /** change against the previous close */
    change_percent?: number;
  };
  feed?: Feed;
}

/**
 * `price_updates`: A batch, for a client that set `batch_ms`: the `price_update`s of the
 * interval, each without its `type`, in arrival order (with `throttle_ms` too, the
 * newest per symbol).
 */
export interface PriceUpdatesMessage {
  type: "price_updates";
  updates:
    | (
    | {
    symbol: string;
    data: PriceUpdateMessage["data"];
    feed?: Feed;
  })[];
}

/**
 * `options (confirmation)`: The delivery options now in force, after an `options`
 * message or at connect.
 */
export interface OptionsConfirmedMessage {
  type: "options";
  throttle_ms: number;
  batch_ms: number;
}

export interface Bar {
  /** the bar's start in Unix milliseconds */
  t: number;
  o: number;
  h: number;
  l: number;
  c: number;
  v: number;
  n: number;
  /** true when the bar's interval overlaps a time the gateway was not receiving the upstream (before it first connected, while it reconnected, or a bar left open by a gateway that stopped): it may lack trades, so a chart can mark it (docs/bars.md "Gaps"); once true it stays true */
  gap: boolean;
}

/**
 * `bars`: The history held for a symbol in an interval, sent once after
 * `subscribe_bars`: up to BAR_HISTORY closed bars, oldest first, then the open bar if
 * there is one (a `bar` message updates it). Each bar: `t` its start (Unix ms, aligned
 * to the interval in UTC), `o` `h` `l` `c` prices (open and close by trade time), `v`
 * volume (a float sum, rounded to 8 decimals), `n` trades. An interval with no trades
 * has no bar. Empty when the gateway holds none yet.
 */
export interface BarsMessage {
  type: "bars";
  symbol: string;
  interval: "1s" | "1m" | "5m" | "15m" | "30m" | "1h" | "1d";
  bars: Bar[];
}

/**
 * `bar`: One bar. `final: false`: the open bar so far, at most once per second per
 * symbol and interval whatever the trade rate. `final: true`: the bar closed, sent when
 * the clock passes its end plus BAR_GRACE seconds (at most 1), even if no later trade
 * came. `revised: true` (with `final: true`): a trade arrived late for a bar already
 * closed (Finnhub can deliver trades out of order): the bar as it is now.
 */
export interface BarMessage {
  type: "bar";
  symbol: string;
  interval: "1s" | "1m" | "5m" | "15m" | "30m" | "1h" | "1d";
  bar: Bar;
  final: boolean;
  revised?: true;
}

/**
 * `auth (status)`: With signed tokens: `authenticated` when a token was accepted (right
 * before `connection`, and after each refresh); `expiring` AUTH_EXPIRY_WARNING seconds
 * before the token's `exp` (or half way through a shorter-lived token): send a fresh
 * `auth` now; `expired` right before the close with 4001. `user` is the token's `sub`;
 * `expires_in` is in seconds.
 */
export interface AuthStatusMessage {
  type: "auth";
  status: "authenticated" | "expiring" | "expired";
  user: string;
  /** seconds until the token's exp */
  expires_in: number;
}

/**
 * `quote`: A price from Finnhub's `/quote`, sent right after the `subscription`
 * confirmation when the symbol has no live price yet (the market is closed, or the
 * symbol is quiet), and beside the live snapshot (fetched again when older than
 * QUOTE_TTL); sent again to every subscriber when a refreshed quote (at a market-session
 * change) brings a new previous close, a new trading day. Never sent when older than the
 * symbol's last `price_update`: a client that shows the last message it got never goes
 * back to an older price. Not a live trade: show it as the last close or a quote.
 * `timestamp` is in Unix milliseconds; `change` and `change_percent` (against
 * `previous_close`) may be null. A symbol Finnhub has no quote for gets none. `feed` is
 * always `polled`: a quote comes by REST; a polled symbol (see `feed`) gets a new quote
 * whenever the gateway polls it.
 */
export interface QuoteMessage {
  type: "quote";
  symbol: string;
  data:
    | {
    price: number;
    change: number | null;
    change_percent: number | null;
    open: number;
    high: number;
    low: number;
    previous_close: number;
    /** Unix milliseconds */
    timestamp: number;
  };
  feed?: Feed;
}

export type Feed = "live" | "sampled" | "polled";

/**
 * `feed`: How a symbol the client follows is carried changed (and, right after the
 * `subscription` confirmation, how each symbol joined is carried if not live). `live`:
 * on the upstream socket, every trade arrives; `sampled`: a symbol that trades often
 * takes turns on the socket's few rotation slots, so its price may be seconds to minutes
 * old; `polled`: a symbol that trades rarely is priced by REST quotes within the key's
 * budget, minutes old (show both as delayed). Finnhub's plan carries
 * MAX_UPSTREAM_SYMBOLS symbols live; the most demanded ones are. A symbol past the
 * socket gets its first price (a sampled update or a polled quote) within about a minute
 * of its first subscriber.
 */
export interface FeedChangeMessage {
  type: "feed";
  symbol: string;
  feed: Feed;
}

/**
 * `market`: The market's session for `exchange` (MARKET_EXCHANGE, US by default): sent
 * after `status` on connect and whenever it changes. `session` is `closed`,
 * `pre-market`, `regular` or `post-market`; `is_open` is true in the regular session;
 * `holiday` names a holiday or is null. Crypto and forex trade whatever it says.
 */
export interface MarketMessage {
  type: "market";
  exchange: string;
  is_open: boolean;
  session: "closed" | "pre-market" | "regular" | "post-market";
  holiday: string | null;
}

/**
 * `pong`: The answer to ping.
 */
export interface PongMessage {
  type: "pong";
}

/**
 * `error`: A refused request; the connection stays open. Codes are listed below.
 */
export interface ErrorMessage {
  type: "error";
  code:
    | "invalid_json"
    | "invalid_message"
    | "unknown_action"
    | "invalid_symbol"
    | "too_many_symbols"
    | "symbol_limit"
    | "symbol_quota"
    | "forbidden_symbol"
    | "rate_limited"
    | "upstream_error"
    | "quote_unavailable"
    | "invalid_options"
    | "auth_required"
    | "auth_failed"
    | "auth_timeout"
    | "too_many_connections"
    | "invalid_interval";
  message: string;
  symbols?: string[];
}

export type ServerMessage =
  | ConnectionMessage
  | StatusMessage
  | SubscriptionMessage
  | PriceUpdateMessage
  | PriceUpdatesMessage
  | OptionsConfirmedMessage
  | AuthStatusMessage
  | BarsMessage
  | BarMessage
  | QuoteMessage
  | MarketMessage
  | FeedChangeMessage
  | PongMessage
  | ErrorMessage;

// ---- END messages
