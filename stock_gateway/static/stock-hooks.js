"use client";
// React hooks for the stock price gateway, usable as they are from a Next.js App Router
// page (hence "use client"; React comes from the app). Copy this file, stock-client.js
// and their .d.ts files into the app, side by side (docs/browser-client.md):
//
//   const { prices, market, status } = useStockPrices(["AAPL", "NVDA"]);
//   const { bars } = useCandles("AAPL", "1m");
//
// The URL is NEXT_PUBLIC_GATEWAY_WS unless `{ url }` is given. Every hook with the same
// URL and delivery options shares one StockClient (one socket), counted by its users and
// closed a moment after the last one leaves: React's strict mode mounts, unmounts and
// mounts again at once, and must not open a second socket, nor unsubscribe and
// subscribe again. Symbols are counted too: a symbol two components follow stays
// subscribed until both let go.
//
// Each hook reads its feed with useSyncExternalStore: the feed is the store, a hook's view
// of it is cached there and rebuilt only when what it shows changed, and the socket's
// callbacks are what tell React. No state is set during an effect.
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { StockClient } from "./stock-client.js";

// Long enough for strict mode's immediate remount and a page switch's mount of the
// same feed; short enough that a closed page frees its socket at once.
const LINGER_MS = 100;
const MAX_BARS = 500;
const CONNECTING = Object.freeze({ connection: "connecting", upstream: null });
const NO_PRICES = Object.freeze({ prices: {}, quotes: {}, market: null, status: CONNECTING });
const NO_BARS = Object.freeze({ bars: [], status: CONNECTING });
const feeds = new Map(); // key -> Feed

function configuredUrl() {
  // Next.js inlines this at build time; elsewhere `process` may not exist at all.
  try {
    return process.env.NEXT_PUBLIC_GATEWAY_WS;
  } catch {
    return undefined;
  }
}

function gatewayUrl(given, hook) {
  const url = given ?? configuredUrl();
  if (!url) {
    throw new Error(
      `${hook}: no gateway URL. Set NEXT_PUBLIC_GATEWAY_WS (e.g. ws://localhost:8000/ws) in ` +
        ".env.local and restart next dev, or pass { url } in the options."
    );
  }
  if (!/^wss?:\/\//.test(url)) {
    throw new Error(`${hook}: the gateway URL must start with ws:// or wss://, not ${JSON.stringify(url)}`);
  }
  return url;
}

function canonical(symbols) {
  return [...new Set(symbols.map((s) => s.trim().toUpperCase()).filter(Boolean))];
}

function sameEntries(a, b) {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => a[key] === b[key]);
}

class Feed {
  constructor(key, url, { throttleMs, batchMs, getToken }) {
    this.key = key;
    this.users = 0;
    this.listeners = new Set();
    this.held = new Map(); // symbol -> how many hooks follow its prices
    this.heldBars = new Map(); // "interval symbol" -> how many hooks follow those bars
    this.idle = false; // a release is pending: settled LINGER_MS later
    this.prices = new Map(); // symbol -> the last live trade, as a Price (live: true)
    this.quotes = new Map(); // symbol -> the last quote
    this.quotePrices = new Map(); // symbol -> the last quote, as a Price (live: false)
    this.bars = new Map(); // "interval symbol" -> Map(t -> bar)
    this.barsSeen = new Map(); // "interval symbol" -> how many times its bars changed
    this.views = new Map(); // a hook's view key -> the view last built (the store's snapshot)
    this.market = null;
    this.status = CONNECTING;
    this.getToken = getToken;
    this.client = new StockClient(url, {
      throttleMs,
      batchMs,
      getToken: getToken ? () => this.getToken() : undefined,
      onPrice: (symbol, data, feed) => {
        this.prices.set(symbol, { ...data, live: true, feed });
        this.emit({ kind: "price", symbol });
      },
      onQuote: (symbol, quote, feed) => {
        this.quotes.set(symbol, quote);
        this.quotePrices.set(symbol, { ...quote, live: false, feed });
        this.emit({ kind: "quote", symbol });
      },
      onMarket: (market) => {
        this.market = market;
        this.emit({ kind: "market" });
      },
      onStatus: (status) => {
        this.status = status;
        this.emit({ kind: "status" });
      },
      onError: (error) => this.emit({ kind: "error", error }),
      onBars: (symbol, interval, bars) => {
        this.bars.set(`${interval} ${symbol}`, new Map(bars.map((bar) => [bar.t, bar])));
        this.barsChanged(symbol, interval);
      },
      onBar: (symbol, interval, bar) => {
        const series = this.bars.get(`${interval} ${symbol}`) ?? new Map();
        this.bars.set(`${interval} ${symbol}`, series);
        series.set(bar.t, bar); // the open bar, its final or a revision: the newest wins
        if (series.size > MAX_BARS * 2) series.delete(Math.min(...series.keys()));
        this.barsChanged(symbol, interval);
      },
    });
  }

  emit(event) {
    for (const listener of this.listeners) listener(event);
  }

  barsChanged(symbol, interval) {
    const key = `${interval} ${symbol}`;
    this.barsSeen.set(key, (this.barsSeen.get(key) ?? 0) + 1);
    this.emit({ kind: "bars", symbol, interval });
  }

  hold(symbols) {
    for (const symbol of symbols) this.held.set(symbol, (this.held.get(symbol) ?? 0) + 1);
    this.client.subscribe(symbols); // sends only the symbols it does not hold yet
  }

  holdBars(symbol, interval) {
    const key = `${interval} ${symbol}`;
    this.heldBars.set(key, (this.heldBars.get(key) ?? 0) + 1);
    this.client.subscribeBars([symbol], interval);
  }

  release(symbols) {
    for (const symbol of symbols) this.held.set(symbol, this.held.get(symbol) - 1);
    this.settleLater();
  }

  releaseBars(symbol, interval) {
    const key = `${interval} ${symbol}`;
    this.heldBars.set(key, this.heldBars.get(key) - 1);
    this.settleLater();
  }

  leave() {
    this.users -= 1;
    this.settleLater();
  }

  settleLater() {
    if (this.idle) return;
    this.idle = true;
    setTimeout(() => this.settle(), LINGER_MS);
  }

  /** What nobody took back in the meantime is let go: symbols, bars, then the socket. */
  settle() {
    this.idle = false;
    if (this.users === 0) {
      this.client.close();
      if (feeds.get(this.key) === this) feeds.delete(this.key);
      return;
    }
    const unwanted = [...this.held].filter(([, count]) => count <= 0).map(([symbol]) => symbol);
    unwanted.forEach((symbol) => {
      this.held.delete(symbol);
      this.prices.delete(symbol);
      this.quotes.delete(symbol);
      this.quotePrices.delete(symbol);
    });
    if (unwanted.length) this.client.unsubscribe(unwanted);
    for (const [key, count] of this.heldBars) {
      if (count > 0) continue;
      this.heldBars.delete(key);
      this.bars.delete(key);
      this.barsSeen.delete(key);
      const [interval, symbol] = key.split(" ");
      this.client.unsubscribeBars([symbol], interval);
    }
    this.views.clear(); // views of symbol lists no hook shows any more go too
  }

  price(symbol) {
    // A live trade always wins over a quote (the gateway sends no quote older than the
    // live price it sent, but a quote may come before a symbol's first trade).
    return this.prices.get(symbol) ?? this.quotePrices.get(symbol);
  }

  series(symbol, interval, maxBars) {
    const bars = [...(this.bars.get(`${interval} ${symbol}`)?.values() ?? [])];
    return bars.sort((a, b) => a.t - b.t).slice(-maxBars);
  }

  /** The prices of `symbols` as useStockPrices shows them: the same object until one of
   * them, the market or the status changes (useSyncExternalStore's snapshot). */
  pricesView(symbols) {
    const key = `prices ${JSON.stringify(symbols)}`;
    const prices = {};
    const quotes = {};
    for (const symbol of symbols) {
      const price = this.price(symbol);
      if (price) prices[symbol] = price;
      const quote = this.quotes.get(symbol);
      if (quote) quotes[symbol] = quote;
    }
    const last = this.views.get(key);
    if (
      last &&
      last.market === this.market &&
      last.status === this.status &&
      sameEntries(last.prices, prices) &&
      sameEntries(last.quotes, quotes)
    ) {
      return last;
    }
    const view = { prices, quotes, market: this.market, status: this.status };
    this.views.set(key, view);
    return view;
  }

  /** A symbol's candles as useCandles shows them: the same object until they or the
   * status change. */
  candlesView(symbol, interval, maxBars) {
    const key = `bars ${interval} ${symbol} ${maxBars}`;
    const seen = symbol ? (this.barsSeen.get(`${interval} ${symbol}`) ?? 0) : 0;
    const last = this.views.get(key);
    if (last && last.seen === seen && last.view.status === this.status) return last.view;
    const bars = symbol ? this.series(symbol, interval, maxBars) : [];
    const view = { bars, status: this.status };
    this.views.set(key, { seen, view });
    return view;
  }
}

function join(key, url, options) {
  let feed = feeds.get(key);
  if (!feed) {
    feed = new Feed(key, url, options);
    feeds.set(key, feed);
  }
  feed.users += 1;
  if (options.getToken) feed.getToken = options.getToken;
  return feed;
}

function useFeedOptions(options, hook) {
  const url = gatewayUrl(options.url, hook);
  const { throttleMs = 250, batchMs = 0, getToken } = options;
  // The newest getToken is called, without a new socket for each render's new function.
  const token = useRef(getToken);
  useEffect(() => {
    token.current = getToken;
  });
  const withToken = Boolean(getToken);
  const key = [url, throttleMs, batchMs, withToken].join(" ");
  // Joins the feed (opening its socket if it is the first) with the options it names.
  const joinFeed = useCallback(
    () =>
      join(key, url, { throttleMs, batchMs, getToken: withToken ? () => token.current() : undefined }),
    [key, url, throttleMs, batchMs, withToken]
  );
  return { key, joinFeed };
}

function concerns(error, symbols) {
  return !error.symbols || error.symbols.some((symbol) => symbols.includes(symbol));
}

/** The last refusal a hook's subscription was told of: kept with the subscription it
 * concerns, so a new subscription (other symbols, another feed) starts with none. */
function useRefusal(subscription) {
  const [refusal, setRefusal] = useState({ subscription: null, error: null });
  const error = refusal.subscription === subscription ? refusal.error : null;
  const refuse = useCallback((error) => setRefusal({ subscription, error }), [subscription]);
  return [error, refuse];
}

/** Live prices (or quotes, before a symbol trades), the market's session and the
 * connection's status for `symbols`. Options: url, throttleMs (default 250), batchMs,
 * getToken. */
export function useStockPrices(symbols, options = {}) {
  const { key, joinFeed } = useFeedOptions(options, "useStockPrices");
  const wantedKey = JSON.stringify(canonical(symbols));
  const [error, refuse] = useRefusal(`${key}\n${wantedKey}`);
  const subscribe = useCallback(
    (changed) => {
      const wanted = JSON.parse(wantedKey);
      const feed = joinFeed();
      const listener = (event) => {
        if (event.kind === "error") {
          if (concerns(event.error, wanted)) refuse(event.error);
        } else if (event.symbol === undefined || wanted.includes(event.symbol)) {
          changed();
        }
      };
      feed.listeners.add(listener);
      feed.hold(wanted);
      return () => {
        feed.listeners.delete(listener);
        feed.release(wanted);
        feed.leave();
      };
    },
    [joinFeed, wantedKey, refuse]
  );
  const snapshot = () => feeds.get(key)?.pricesView(JSON.parse(wantedKey)) ?? NO_PRICES;
  const view = useSyncExternalStore(subscribe, snapshot, () => NO_PRICES);
  return useMemo(() => ({ ...view, error }), [view, error]);
}

/** A symbol's candles in one interval ("1s", "1m", "5m", "15m", "30m", "1h" or "1d"): the history the gateway
 * holds, then live and final bars, oldest first. No symbol: none. Options: those of
 * useStockPrices, and maxBars (default 500). */
export function useCandles(symbol, interval = "1m", options = {}) {
  const { key, joinFeed } = useFeedOptions(options, "useCandles");
  const wanted = symbol ? symbol.trim().toUpperCase() : "";
  const maxBars = options.maxBars ?? MAX_BARS;
  const [error, refuse] = useRefusal(`${key}\n${interval} ${wanted}`);
  const subscribe = useCallback(
    (changed) => {
      const feed = joinFeed();
      const listener = (event) => {
        if (event.kind === "status") changed();
        else if (event.kind === "error" && wanted && concerns(event.error, [wanted])) {
          refuse(event.error);
        } else if (event.kind === "bars" && event.symbol === wanted && event.interval === interval) {
          changed();
        }
      };
      feed.listeners.add(listener);
      if (wanted) feed.holdBars(wanted, interval);
      return () => {
        feed.listeners.delete(listener);
        if (wanted) feed.releaseBars(wanted, interval);
        feed.leave();
      };
    },
    [joinFeed, wanted, interval, refuse]
  );
  const snapshot = () => feeds.get(key)?.candlesView(wanted, interval, maxBars) ?? NO_BARS;
  const view = useSyncExternalStore(subscribe, snapshot, () => NO_BARS);
  return useMemo(() => ({ ...view, error }), [view, error]);
}
