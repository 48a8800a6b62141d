// The /demo page: a StockClient plus cards with the last price, the day's change (or
// the change since the first price seen, when the previous close is unknown), volume,
// time, an up/down flash and a sparkline per symbol. Before a symbol trades (say the
// market is closed) its card shows the quote's price, labelled as such; the header
// shows the market's session.
import { StockClient } from "/static/stock-client.js";

const SPARK_POINTS = 60;
const cards = new Map(); // symbol -> { element, first, prices }
const grid = document.getElementById("cards");
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${location.search}`;

const REFUSED = new Set(["invalid_symbol", "too_many_symbols", "symbol_limit", "symbol_quota", "forbidden_symbol", "upstream_error"]);

const client = new StockClient(wsUrl, {
  // Four updates a second per card is what an eye can follow; the gateway sends the newest.
  throttleMs: 250,
  onPrice: (symbol, data) => update(symbol, data),
  onQuote: (symbol, quote) => showQuote(symbol, quote),
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
  const symbols = input.value.split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
  symbols.forEach(addCard);
  client.subscribe(symbols);
  input.value = "";
  document.getElementById("message").textContent = "";
});

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
    <svg viewBox="0 0 100 40" preserveAspectRatio="none"><polyline fill="none" stroke="#2563eb" stroke-width="1.5"/></svg>`;
  element.querySelector(".symbol").textContent = symbol; // text, never markup
  element.querySelector(".remove").addEventListener("click", () => {
    client.unsubscribe([symbol]);
    removeCard(symbol);
  });
  grid.append(element);
  cards.set(symbol, { element, first: null, prices: [], live: false });
}

function removeCard(symbol) {
  cards.get(symbol)?.element.remove();
  cards.delete(symbol);
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

function update(symbol, data) {
  const card = cards.get(symbol);
  if (!card) return;
  const previous = card.prices.at(-1);
  card.live = true;
  card.first ??= data.price;
  card.prices.push(data.price);
  if (card.prices.length > SPARK_POINTS) card.prices.shift();
  const { element } = card;
  const digits = digitsFor(data.price);
  element.querySelector(".price").textContent = data.price.toFixed(digits);
  element.querySelector(".source").textContent = "live";
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
  drawSparkline(element.querySelector("polyline"), card.prices);
}

function drawSparkline(line, prices) {
  const low = Math.min(...prices);
  const high = Math.max(...prices);
  const span = high - low || 1;
  const step = 100 / Math.max(prices.length - 1, 1);
  line.setAttribute(
    "points",
    prices.map((p, i) => `${(i * step).toFixed(1)},${(38 - ((p - low) / span) * 36).toFixed(1)}`).join(" "),
  );
}
