// A small client for the stock price gateway's /ws protocol (see /docs).
//
//   import { StockClient } from "/static/stock-client.js";
//   const client = new StockClient("ws://localhost:8000/ws", {
//     onPrice: (symbol, data) => console.log(symbol, data.price, data.change_percent),
//     onQuote: (symbol, quote) => console.log(symbol, "last", quote.price),
//     onMarket: (market) => console.log(market.session),
//     onStatus: (status) => console.log(status.connection, status.upstream),
//     throttleMs: 250, // at most 4 updates a second per symbol (the newest); 0: every trade
//     batchMs: 100, // or/and: updates grouped into one frame at most every 100 ms
//     getToken: async () => (await fetch("/api/gateway-token")).text(), // signed tokens only
//   });
//   client.subscribe(["AAPL", "NVDA"]);
//   client.subscribeBars(["AAPL"], "1m"); // candles: onBars (history), then onBar
//
// It reconnects by itself with full-jitter exponential backoff and resubscribes every
// symbol it holds, and sends an application-level ping so dead connections are noticed
// (browsers cannot send protocol pings). When the gateway verifies signed tokens, it
// calls `getToken()` on every connect (the token goes in the first message, never in
// the URL) and again when the server says the token is expiring, so the stream goes on
// with no gap. No dependencies, no build step. Types: stock-client.d.ts beside this
// file; React hooks over it: stock-hooks.js.

// Error codes that mean "these symbols were not subscribed" (see /docs).
const REFUSALS = new Set([
  "invalid_symbol", "too_many_symbols", "symbol_limit", "symbol_quota", "forbidden_symbol", "upstream_error",
]);

export class StockClient {
  /**
   * @param {string} url  ws:// or wss:// address of /ws (add ?token=... if required)
   * @param {object} [options]
   * @param {(symbol: string, data: {price: number, volume: number, timestamp: number, change?: number, change_percent?: number}) => void} [options.onPrice]
   *   a live trade; `change`/`change_percent` (against the previous close) when known
   * @param {(symbol: string, quote: {price: number, change: number|null, change_percent: number|null, open: number, high: number, low: number, previous_close: number, timestamp: number}) => void} [options.onQuote]
   *   a quote (not a live trade): sent when a symbol has no live price yet, e.g. the market is closed,
   *   and never older than the last onPrice of its symbol (the gateway does not send those)
   *   The third argument of onPrice and onQuote is the price's `feed`: "live", "sampled" or "polled"
   * @param {(symbol: string, feed: "live"|"sampled"|"polled") => void} [options.onFeed]
   *   how a followed symbol is carried changed: "sampled" and "polled" prices may be delayed
   * @param {(market: {exchange: string, is_open: boolean, session: string, holiday: string|null}) => void} [options.onMarket]
   *   the market's session, on connect and whenever it changes
   * @param {(status: {connection: string, upstream: string|null}) => void} [options.onStatus]
   * @param {(error: {code: string, message: string, symbols?: string[]}) => void} [options.onError]
   * @param {(symbol: string, interval: string, bars: Bar[]) => void} [options.onBars]
   *   the history held, once per subscribeBars (oldest first; the last may be the open bar)
   * @param {(symbol: string, interval: string, bar: Bar, state: {final: boolean, revised: boolean}) => void} [options.onBar]
   *   a bar: the open one so far (at most once a second), or `final` when it closed
   *   (`revised` when a late trade changed a closed bar). Bar: {t, o, h, l, c, v, n}, t in ms
   * @param {number} [options.throttleMs]  at most one update per symbol this often (the newest); 0: off
   * @param {number} [options.batchMs]  group updates into one frame at most this often; 0: off
   * @param {() => Promise<string>|string} [options.getToken]  a fresh signed token (JWT) for
   *   this user, when the gateway verifies them: called on connect and on "expiring"
   * @param {number} [options.pingInterval]  ms between pings (default 20000)
   * @param {number} [options.maxBackoff]  ms cap for reconnect delays (default 30000)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { pingInterval: 20000, maxBackoff: 30000, throttleMs: 0, batchMs: 0, ...options };
    this.symbols = new Set();
    this.barSymbols = new Map(); // interval -> Set of symbols
    this.connection = "connecting";
    this.upstream = null;
    this.market = null; // the last `market` message
    this.feeds = new Map(); // symbol -> "live" | "sampled" | "polled", as last told
    this.attempt = 0;
    this.closed = false;
    this.socket = null;
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.lastPongAt = 0;
    this.openedAt = 0;
    this.ready = false; // open, and authenticated when a token is needed
    this.connect();
  }

  /** Follow symbols; remembered across reconnects. */
  subscribe(symbols) {
    const fresh = symbols.map((s) => s.trim().toUpperCase()).filter((s) => s && !this.symbols.has(s));
    fresh.forEach((s) => this.symbols.add(s));
    if (fresh.length) this.send({ action: "subscribe", symbols: fresh });
  }

  /** Stop following symbols. */
  unsubscribe(symbols) {
    const held = symbols.map((s) => s.trim().toUpperCase()).filter((s) => this.symbols.delete(s));
    if (held.length) this.send({ action: "unsubscribe", symbols: held });
  }

  /** Follow symbols' bars in one interval ("1s", "1m", "5m", "15m", "30m", "1h" or "1d"); remembered across reconnects. */
  subscribeBars(symbols, interval = "1m") {
    const held = this.barSymbols.get(interval) ?? new Set();
    this.barSymbols.set(interval, held);
    const fresh = symbols.map((s) => s.trim().toUpperCase()).filter((s) => s && !held.has(s));
    fresh.forEach((s) => held.add(s));
    if (fresh.length) this.send({ action: "subscribe_bars", symbols: fresh, interval });
  }

  /** Stop following symbols' bars in that interval. */
  unsubscribeBars(symbols, interval = "1m") {
    const held = this.barSymbols.get(interval) ?? new Set();
    const gone = symbols.map((s) => s.trim().toUpperCase()).filter((s) => held.delete(s));
    if (gone.length) this.send({ action: "unsubscribe_bars", symbols: gone, interval });
  }

  /** Close for good: no more reconnects. */
  close() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    if (this.socket) this.socket.close(1000, "client closed");
    this.setStatus("closed");
  }

  connect() {
    if (this.closed) return;
    this.setStatus("connecting");
    this.ready = false;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = async () => {
      this.openedAt = Date.now();
      this.lastPongAt = Date.now();
      if (this.options.getToken) {
        // The token must be the first message: nothing else is served before it.
        const token = await this.fetchToken();
        if (this.socket !== socket || token === null) return;
        socket.send(JSON.stringify({ action: "auth", token }));
      }
      this.ready = true;
      this.setStatus("open");
      const { throttleMs, batchMs } = this.options;
      if (throttleMs || batchMs) this.send({ action: "options", throttle_ms: throttleMs, batch_ms: batchMs });
      if (this.symbols.size) this.send({ action: "subscribe", symbols: [...this.symbols] });
      for (const [interval, held] of this.barSymbols) {
        if (held.size) this.send({ action: "subscribe_bars", symbols: [...held], interval });
      }
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.ping(), this.options.pingInterval);
    };
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => {
      clearInterval(this.pingTimer);
      if (this.socket !== socket) return; // already abandoned
      // Only a connection that stayed up resets the backoff: a server that accepts and
      // closes at once (full: 1013, or rate limit: 1008) must not be hammered.
      if (this.openedAt && Date.now() - this.openedAt > 5000) this.attempt = 0;
      // Full, rate-limited, a refused token or too many connections for this user: back off.
      if ([1008, 1013, 4003, 4029].includes(event.code)) this.attempt = Math.max(this.attempt, 4);
      this.openedAt = 0;
      this.scheduleReconnect();
    };
  }

  /** Give up on the current socket now (a half-open one may never finish closing). */
  abandon() {
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.close();
    }
    clearInterval(this.pingTimer);
    this.scheduleReconnect();
  }

  ping() {
    // No pong for two intervals: the connection is dead even if the browser has not noticed.
    if (Date.now() - this.lastPongAt > 2 * this.options.pingInterval) {
      this.abandon();
      return;
    }
    this.send({ action: "ping" });
  }

  scheduleReconnect() {
    if (this.closed) return;
    this.upstream = null; // unknown until the next connection says
    this.setStatus("reconnecting");
    const ceiling = Math.min(this.options.maxBackoff, 500 * 2 ** this.attempt);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.connect(), Math.random() * ceiling);
  }

  async fetchToken() {
    try {
      return await this.options.getToken();
    } catch (error) {
      this.options.onError?.({ code: "auth_failed", message: `getToken failed: ${error}` });
      this.abandon(); // try again later, with backoff
      return null;
    }
  }

  async refreshToken() {
    const socket = this.socket;
    const token = await this.fetchToken();
    if (token !== null && this.socket === socket) this.send({ action: "auth", token });
  }

  send(message) {
    // Before the token went out, symbols are only remembered: they are sent once ready.
    if (this.ready && this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    switch (message.type) {
      case "price_update":
        this.options.onPrice?.(message.symbol, message.data, message.feed ?? "live");
        break;
      case "price_updates": // a batch (batchMs): the same updates, in order
        for (const update of message.updates) {
          this.options.onPrice?.(update.symbol, update.data, update.feed ?? "live");
        }
        break;
      case "feed": // past the upstream's cap a symbol may be sampled or polled: delayed
        this.feeds.set(message.symbol, message.feed);
        this.options.onFeed?.(message.symbol, message.feed);
        break;
      case "bars":
        this.options.onBars?.(message.symbol, message.interval, message.bars);
        break;
      case "bar":
        this.options.onBar?.(message.symbol, message.interval, message.bar, {
          final: message.final,
          revised: message.revised === true,
        });
        break;
      case "quote":
        this.options.onQuote?.(message.symbol, message.data, message.feed ?? "polled");
        break;
      case "market":
        this.market = message;
        this.options.onMarket?.(message);
        break;
      case "status":
        this.upstream = message.upstream;
        this.setStatus(this.connection);
        break;
      case "auth": // signed tokens: refresh before the token expires
        if (message.status === "expiring" && this.options.getToken) this.refreshToken();
        break;
      case "pong":
        this.lastPongAt = Date.now();
        break;
      case "error":
        // Symbols the gateway or Finnhub refused are no longer held (a missing quote or
        // a rate-limited request leaves the subscription as it was).
        if (REFUSALS.has(message.code)) {
          for (const symbol of message.symbols || []) {
            this.symbols.delete(symbol);
            for (const held of this.barSymbols.values()) held.delete(symbol);
          }
        }
        this.options.onError?.(message);
        break;
      default:
        break; // connection, subscription: nothing to do
    }
  }

  setStatus(connection) {
    this.connection = connection;
    this.options.onStatus?.({ connection, upstream: this.upstream });
  }
}
