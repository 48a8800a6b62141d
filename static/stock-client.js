// A small client for the stock price gateway's /ws protocol (see /docs).
//
//   import { StockClient } from "/static/stock-client.js";
//   const client = new StockClient("ws://localhost:8000/ws", {
//     onPrice: (symbol, data) => console.log(symbol, data.price),
//     onStatus: (status) => console.log(status.connection, status.upstream),
//   });
//   client.subscribe(["AAPL", "NVDA"]);
//
// It reconnects by itself with full-jitter exponential backoff and resubscribes every
// symbol it holds, and sends an application-level ping so dead connections are noticed
// (browsers cannot send protocol pings). No dependencies, no build step.

export class StockClient {
  /**
   * @param {string} url  ws:// or wss:// address of /ws (add ?token=... if required)
   * @param {object} [options]
   * @param {(symbol: string, data: {price: number, volume: number, timestamp: number}) => void} [options.onPrice]
   * @param {(status: {connection: string, upstream: string|null}) => void} [options.onStatus]
   * @param {(error: {code: string, message: string, symbols?: string[]}) => void} [options.onError]
   * @param {number} [options.pingInterval]  ms between pings (default 20000)
   * @param {number} [options.maxBackoff]  ms cap for reconnect delays (default 30000)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { pingInterval: 20000, maxBackoff: 30000, ...options };
    this.symbols = new Set();
    this.connection = "connecting";
    this.upstream = null;
    this.attempt = 0;
    this.closed = false;
    this.socket = null;
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.lastPongAt = 0;
    this.openedAt = 0;
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
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.openedAt = Date.now();
      this.lastPongAt = Date.now();
      this.setStatus("open");
      if (this.symbols.size) this.send({ action: "subscribe", symbols: [...this.symbols] });
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
      if (event.code === 1013 || event.code === 1008) this.attempt = Math.max(this.attempt, 4);
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

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
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
        this.options.onPrice?.(message.symbol, message.data);
        break;
      case "status":
        this.upstream = message.upstream;
        this.setStatus(this.connection);
        break;
      case "pong":
        this.lastPongAt = Date.now();
        break;
      case "error":
        // Symbols the gateway or Finnhub refused are no longer held.
        if (message.code !== "rate_limited") (message.symbols || []).forEach((s) => this.symbols.delete(s));
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
