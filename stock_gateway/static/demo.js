// The /demo page: a StockClient plus cards with the last price, the day's change (or
// the change since the first price seen, when the previous close is unknown), volume,
// time, an up/down flash and a live candle chart per symbol (1-second bars built by the
// gateway: history on subscribe, then live and final bars, drawn on a <canvas>). Before
// a symbol trades (say the market is closed) its card shows the quote's price, labelled
// as such; the header shows the market's session. It starts with a few symbols the
// simulator trades (crypto even while the stock market is closed) and remembers the
// visitor's own list in localStorage.
import { StockClient } from "/static/stock-client.js";

const CHART_BARS = 60; // the last minute of 1-second bars
const BAR_INTERVAL = "1s";
const DEFAULT_SYMBOLS = ["AAPL", "MSFT", "BINANCE:BTCUSDT"];
const SAVED_SYMBOLS = "stock-gateway.demo.symbols"; // localStorage key
const cards = new Map(); // symbol -> { element, first, last, live, bars }
const grid = document.getElementById("cards");
// The page's own query string never reaches /ws: a token in it would end up in the
// WebSocket's URL (server and proxy logs). A signed token given as /demo?token=... is
// taken off the address bar (history, bookmarks, Referer) and sent as the auth message.
const pageQuery = new URLSearchParams(location.search);
const pageToken = pageQuery.get("token");
if (pageToken !== null) {
  pageQuery.delete("token");
  const rest = pageQuery.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
}
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

const REFUSED = new Set(["invalid_symbol", "too_many_symbols", "symbol_limit", "symbol_quota", "forbidden_symbol", "upstream_error"]);

const client = new StockClient(wsUrl, {
  // Four updates a second per card is what an eye can follow; the gateway sends the newest.
  throttleMs: 250,
  ...(pageToken ? { getToken: () => pageToken } : {}),
  onPrice: (symbol, data, feed) => update(symbol, data, feed),
  onQuote: (symbol, quote) => showQuote(symbol, quote),
  onFeed: (symbol, feed) => markFeed(symbol, feed),
  onBars: (symbol, interval, bars) => {
    const card = cards.get(symbol);
    if (!card || interval !== BAR_INTERVAL) return;
    card.bars = new Map(bars.map((bar) => [bar.t, bar]));
    drawCandles(card);
  },
  onBar: (symbol, interval, bar) => {
    const card = cards.get(symbol);
    if (!card || interval !== BAR_INTERVAL) return;
    card.bars.set(bar.t, bar); // a live bar, its final, or a revision: the newest wins
    drawCandles(card);
  },
  onMarket: (market) => {
    const label = market.holiday ? `${market.session} (${market.holiday})` : market.session;
    pill("market", label, market.is_open);
  },
  onStatus: ({ connection, upstream }) => {
    pill("connection", connection, connection === "open");
    pill("upstream", upstream ?? "unknown", upstream === "connected");
  },
  onError: (error) => {
    document.getElementById("message").textContent = error.message;
    if (REFUSED.has(error.code)) (error.symbols || []).forEach((symbol) => removeCard(symbol));
  },
});
window.stockClient = client; // for the curious, and for the browser test

// Say so when the prices are not real: /health tells whether this is demo mode.
fetch("/health")
  .then((response) => response.json())
  .then((health) => {
    document.getElementById("simulated").hidden = !health.demo;
  })
  .catch(() => {}); // the page works without it

document.getElementById("add").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("symbol");
  watch(input.value.split(",").map((s) => s.trim().toUpperCase()).filter(Boolean));
  input.value = "";
  document.getElementById("message").textContent = "";
});
watch(savedSymbols());

function watch(symbols) {
  if (!symbols.length) return;
  symbols.forEach(addCard);
  client.subscribe(symbols);
  client.subscribeBars(symbols, BAR_INTERVAL);
}

// The visitor's list from an earlier visit, or the defaults on a first one.
function savedSymbols() {
  try {
    const saved = JSON.parse(localStorage.getItem(SAVED_SYMBOLS) ?? "null");
    if (Array.isArray(saved) && saved.every((symbol) => typeof symbol === "string")) return saved;
  } catch {
    // storage blocked, or something else under our key: start from the defaults
  }
  return DEFAULT_SYMBOLS;
}

function saveSymbols() {
  try {
    localStorage.setItem(SAVED_SYMBOLS, JSON.stringify([...cards.keys()]));
  } catch {
    // storage blocked or full: the page works, it just forgets
  }
}

function pill(id, text, good) {
  const element = document.getElementById(id);
  element.textContent = text;
  element.className = `pill ${good ? "ok" : "bad"}`;
}

function addCard(symbol) {
  if (cards.has(symbol)) return;
  grid.querySelector(".empty")?.remove();
  const element = document.createElement("article");
  element.className = "card";
  element.dataset.symbol = symbol;
  element.innerHTML = `
    <button class="remove" title="remove">&times;</button>
    <div class="symbol"></div>
    <div class="price">&mdash;</div>
    <div class="source meta"></div>
    <div class="change meta"></div>
    <div class="meta volume"></div>
    <canvas class="candles" width="300" height="80" data-bars="0" aria-label="1-second candles"></canvas>`;
  element.querySelector(".symbol").textContent = symbol; // text, never markup
  element.querySelector(".remove").addEventListener("click", () => {
    client.unsubscribe([symbol]);
    client.unsubscribeBars([symbol], BAR_INTERVAL);
    removeCard(symbol);
  });
  grid.append(element);
  cards.set(symbol, { element, first: null, last: undefined, live: false, bars: new Map() });
  saveSymbols();
}

// Also for a symbol the gateway refused, which is then not remembered either.
function removeCard(symbol) {
  cards.get(symbol)?.element.remove();
  cards.delete(symbol);
  saveSymbols();
}

function digitsFor(price) {
  return price < 10 ? 5 : 2;
}

function showChange(element, change, percent, digits, suffix) {
  const changeElement = element.querySelector(".change");
  changeElement.textContent = `${change >= 0 ? "+" : ""}${change.toFixed(digits)} (${percent.toFixed(2)}%) ${suffix}`;
  changeElement.className = `change meta ${change > 0 ? "up" : change < 0 ? "down" : ""}`;
}

// A quote is not a trade: shown only until the first live price, and labelled.
function showQuote(symbol, quote) {
  const card = cards.get(symbol);
  if (!card || card.live) return;
  const { element } = card;
  const digits = digitsFor(quote.price);
  element.querySelector(".price").textContent = quote.price.toFixed(digits);
  const closed = client.market && !client.market.is_open;
  element.querySelector(".source").textContent = closed ? "last close" : "quote";
  if (quote.change !== null && quote.change_percent !== null) {
    showChange(element, quote.change, quote.change_percent, digits, "today");
  }
  element.querySelector(".volume").textContent = `as of ${new Date(quote.timestamp).toLocaleString()}`;
}

// Past the upstream's cap a symbol is sampled or polled: its price may be delayed.
function markFeed(symbol, feed) {
  const card = cards.get(symbol);
  if (card) card.element.classList.toggle("delayed", feed !== "live");
  if (card) card.element.title = feed === "live" ? "" : `delayed (${feed})`;
}

function update(symbol, data, feed = "live") {
  const card = cards.get(symbol);
  if (!card) return;
  markFeed(symbol, feed);
  const previous = card.last;
  card.live = true;
  card.first ??= data.price;
  card.last = data.price;
  const { element } = card;
  const digits = digitsFor(data.price);
  element.querySelector(".price").textContent = data.price.toFixed(digits);
  element.querySelector(".source").textContent = feed;
  if (data.change !== undefined && data.change_percent !== undefined) {
    showChange(element, data.change, data.change_percent, digits, "today");
  } else {
    const change = data.price - card.first;
    showChange(element, change, (change / card.first) * 100, digits, "since first seen");
  }
  element.querySelector(".volume").textContent =
    `vol ${data.volume} · ${new Date(data.timestamp).toLocaleTimeString()}`;
  if (previous !== undefined && previous !== data.price) {
    element.classList.remove("flash-up", "flash-down");
    void element.offsetWidth; // restart the transition
    element.classList.add(data.price > previous ? "flash-up" : "flash-down");
    setTimeout(() => element.classList.remove("flash-up", "flash-down"), 150);
  }
}

// Candles: a wick from low to high and a body from open to close, green when it rose;
// grey when the gateway was not receiving Finnhub for part of it (`gap`: trades missing).
function drawCandles(card) {
  const canvas = card.element.querySelector("canvas");
  const times = [...card.bars.keys()].sort((a, b) => a - b).slice(-CHART_BARS);
  for (const t of card.bars.keys()) if (t < times[0]) card.bars.delete(t);
  const bars = times.map((t) => card.bars.get(t));
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.bars = String(bars.length);
  if (!bars.length) return;
  const low = Math.min(...bars.map((bar) => bar.l));
  const high = Math.max(...bars.map((bar) => bar.h));
  const span = high - low || 1;
  const y = (price) => 4 + (1 - (price - low) / span) * (canvas.height - 8);
  const slot = canvas.width / CHART_BARS;
  bars.forEach((bar, index) => {
    const x = canvas.width - (bars.length - index) * slot + slot / 2;
    const colour = bar.gap ? "#8a8f98" : bar.c >= bar.o ? "#0a7d38" : "#c0262d";
    context.strokeStyle = context.fillStyle = colour;
    context.beginPath();
    context.moveTo(x, y(bar.h));
    context.lineTo(x, y(bar.l));
    context.stroke();
    const top = y(Math.max(bar.o, bar.c));
    context.fillRect(x - slot * 0.35, top, slot * 0.7, Math.max(1, y(Math.min(bar.o, bar.c)) - top));
  });
}
