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
import { useEffect, useRef, useState } from "react";
import { StockClient } from "./stock-client.js";

// Long enough for strict mode's immediate remount and a page switch's mount of the
// same feed; short enough that a closed page frees its socket at once.
const LINGER_MS = 100;
const MAX_BARS = 500;
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

class Feed {
  constructor(key, url, { throttleMs, batchMs, getToken }) {
    this.key = key;
    this.users = 0;
    this.listeners = new Set();
    this.held = new Map(); // symbol -> how many hooks follow its prices
    this.heldBars = new Map(); // "interval symbol" -> how many hooks follow those bars
    this.idle = false; // a release is pending: settled LINGER_MS later
    this.prices = new Map(); // symbol -> the last live trade
    this.quotes = new Map(); // symbol -> the last quote
    this.bars = new Map(); // "interval symbol" -> Map(t -> bar)
    this.market = null;
    this.status = { connection: "connecting", upstream: null };
    this.getToken = getToken;
    this.client = new StockClient(url, {
      throttleMs,
      batchMs,
      getToken: getToken ? () => this.getToken() : undefined,
      onPrice: (symbol, data) => {
        this.prices.set(symbol, data);
        this.emit({ kind: "price", symbol });
      },
      onQuote: (symbol, quote) => {
        this.quotes.set(symbol, quote);
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
        this.emit({ kind: "bars", symbol, interval });
      },
      onBar: (symbol, interval, bar) => {
        const series = this.bars.get(`${interval} ${symbol}`) ?? new Map();
        this.bars.set(`${interval} ${symbol}`, series);
        series.set(bar.t, bar); // the open bar, its final or a revision: the newest wins
        if (series.size > MAX_BARS * 2) series.delete(Math.min(...series.keys()));
        this.emit({ kind: "bars", symbol, interval });
      },
    });
  }

  emit(event) {
    for (const listener of this.listeners) listener(event);
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
    });
    if (unwanted.length) this.client.unsubscribe(unwanted);
    for (const [key, count] of this.heldBars) {
      if (count > 0) continue;
      this.heldBars.delete(key);
      this.bars.delete(key);
      const [interval, symbol] = key.split(" ");
      this.client.unsubscribeBars([symbol], interval);
    }
  }

  price(symbol) {
    const live = this.prices.get(symbol);
    if (live) return { ...live, live: true }; // a live trade always wins over a quote
    const quote = this.quotes.get(symbol);
    return quote ? { ...quote, live: false } : undefined;
  }

  series(symbol, interval, maxBars) {
    const bars = [...(this.bars.get(`${interval} ${symbol}`)?.values() ?? [])];
    return bars.sort((a, b) => a.t - b.t).slice(-maxBars);
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
  const settings = { throttleMs, batchMs, getToken: getToken && (() => token.current()) };
  return { key: [url, throttleMs, batchMs, Boolean(getToken)].join(" "), url, settings };
}

function concerns(error, symbols) {
  return !error.symbols || error.symbols.some((symbol) => symbols.includes(symbol));
}

function pricesView(feed, symbols) {
  const prices = {};
  const quotes = {};
  for (const symbol of symbols) {
    const price = feed?.price(symbol);
    if (price) prices[symbol] = price;
    const quote = feed?.quotes.get(symbol);
    if (quote) quotes[symbol] = quote;
  }
  return {
    prices,
    quotes,
    market: feed?.market ?? null,
    status: feed?.status ?? { connection: "connecting", upstream: null },
    error: null,
  };
}

/** Live prices (or quotes, before a symbol trades), the market's session and the
 * connection's status for `symbols`. Options: url, throttleMs (default 250), batchMs,
 * getToken. */
export function useStockPrices(symbols, options = {}) {
  const { key, url, settings } = useFeedOptions(options, "useStockPrices");
  const wanted = canonical(symbols);
  const wantedKey = wanted.join(",");
  const [view, setView] = useState(() => pricesView(feeds.get(key), wanted));
  useEffect(() => {
    const feed = join(key, url, settings);
    const listener = (event) => {
      if (event.symbol !== undefined && !wanted.includes(event.symbol)) return;
      if (event.kind === "error") {
        if (concerns(event.error, wanted)) setView((v) => ({ ...v, error: event.error }));
      } else if (event.kind === "price") {
        setView((v) => ({ ...v, prices: { ...v.prices, [event.symbol]: feed.price(event.symbol) } }));
      } else if (event.kind === "quote") {
        setView((v) => ({
          ...v,
          prices: { ...v.prices, [event.symbol]: feed.price(event.symbol) },
          quotes: { ...v.quotes, [event.symbol]: feed.quotes.get(event.symbol) },
        }));
      } else if (event.kind === "market" || event.kind === "status") {
        setView((v) => ({ ...v, market: feed.market, status: feed.status }));
      }
    };
    feed.listeners.add(listener);
    feed.hold(wanted);
    setView(pricesView(feed, wanted));
    return () => {
      feed.listeners.delete(listener);
      feed.release(wanted);
      feed.leave();
    };
  }, [key, wantedKey]); // eslint-disable-line react-hooks/exhaustive-deps
  return view;
}

/** A symbol's candles in one interval ("1s", "1m", "5m", "15m", "30m", "1h" or "1d"): the history the gateway
 * holds, then live and final bars, oldest first. No symbol: none. Options: those of
 * useStockPrices, and maxBars (default 500). */
export function useCandles(symbol, interval = "1m", options = {}) {
  const { key, url, settings } = useFeedOptions(options, "useCandles");
  const wanted = symbol ? symbol.trim().toUpperCase() : "";
  const maxBars = options.maxBars ?? MAX_BARS;
  const initial = () => {
    const feed = feeds.get(key);
    return {
      bars: feed && wanted ? feed.series(wanted, interval, maxBars) : [],
      status: feed?.status ?? { connection: "connecting", upstream: null },
      error: null,
    };
  };
  const [view, setView] = useState(initial);
  useEffect(() => {
    const feed = join(key, url, settings);
    const listener = (event) => {
      if (event.kind === "status") setView((v) => ({ ...v, status: feed.status }));
      else if (event.kind === "error" && wanted && concerns(event.error, [wanted])) {
        setView((v) => ({ ...v, error: event.error }));
      } else if (event.kind === "bars" && event.symbol === wanted && event.interval === interval) {
        setView((v) => ({ ...v, bars: feed.series(wanted, interval, maxBars) }));
      }
    };
    feed.listeners.add(listener);
    if (wanted) feed.holdBars(wanted, interval);
    setView({
      bars: wanted ? feed.series(wanted, interval, maxBars) : [],
      status: feed.status,
      error: null,
    });
    return () => {
      feed.listeners.delete(listener);
      if (wanted) feed.releaseBars(wanted, interval);
      feed.leave();
    };
  }, [key, wanted, interval, maxBars]); // eslint-disable-line react-hooks/exhaustive-deps
  return view;
}
