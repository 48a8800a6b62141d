// The declarations at work: every option and callback of StockClient, the messages as
// a discriminated union, and the hooks. The @ts-expect-error lines must stay errors:
// were a type `any`, tsc would report them as unused.
import {
  StockClient,
  type ClientMessage,
  type ServerMessage,
  type StockClientOptions,
} from "@/lib/stock-gateway/stock-client";
import { useCandles, useStockPrices } from "@/lib/stock-gateway/stock-hooks";

const seen: string[] = [];

export const client = new StockClient("ws://localhost:8000/ws", {
  throttleMs: 250,
  batchMs: 100,
  pingInterval: 20_000,
  maxBackoff: 30_000,
  getToken: async () => (await fetch("/api/gateway-token")).text(),
  onPrice: (symbol, data) => {
    const change: number | undefined = data.change_percent;
    seen.push(`${symbol} ${data.price} ${data.volume} ${data.timestamp} ${change}`);
  },
  onQuote: (symbol, quote) => {
    const change: number | null = quote.change;
    seen.push(`${symbol} ${quote.previous_close} ${change}`);
  },
  onMarket: (market) => seen.push(market.is_open ? market.session : (market.holiday ?? "closed")),
  onStatus: ({ connection, upstream }) => seen.push(`${connection} ${upstream ?? "unknown"}`),
  onError: (error) => {
    if (error.code === "symbol_limit") seen.push(...(error.symbols ?? []));
  },
  onBars: (symbol, interval, bars) => seen.push(`${symbol} ${interval} ${bars.map((bar) => bar.c)}`),
  onBar: (symbol, interval, bar, { final, revised }) =>
    seen.push(`${symbol} ${interval} ${bar.t} ${bar.o} ${bar.h} ${bar.l} ${bar.v} ${bar.n} ${final} ${revised}`),
});
client.subscribe(["AAPL", "NVDA"]);
client.subscribeBars(["AAPL"], "1m");
client.unsubscribeBars(["AAPL"]);
client.send({ action: "options", throttle_ms: 100, batch_ms: 0 });
// @ts-expect-error: "2m" is not an interval
client.subscribeBars(["AAPL"], "2m");
// @ts-expect-error: options are whole milliseconds, not words
client.send({ action: "options", throttle_ms: "fast" });
// @ts-expect-error: a trade has no bid
export const bid: StockClientOptions["onPrice"] = (_symbol, data) => seen.push(String(data.bid));
// @ts-expect-error: a quote's change may be null
export const change: StockClientOptions["onQuote"] = (_symbol, quote) => quote.change.toFixed(2);

export function describe(message: ServerMessage): string {
  switch (message.type) {
    case "price_update":
      return `${message.symbol} ${message.data.price}`;
    case "price_updates":
      return message.updates.map((update) => update.symbol).join(",");
    case "bar":
      return `${message.symbol} ${message.bar.c} ${message.final}`;
    case "error":
      return `${message.code}: ${message.message}`;
    default:
      return message.type;
  }
}

export const unsubscribe: ClientMessage = { action: "unsubscribe", symbols: ["AAPL"] };

export function Ticker({ symbol }: { symbol: string }) {
  const { prices, quotes, market, status, error } = useStockPrices([symbol], {
    url: "ws://localhost:8000/ws",
    throttleMs: 500,
    getToken: () => "a-signed-token",
  });
  const { bars } = useCandles(symbol, "5m", { maxBars: 100 });
  const price = prices[symbol];
  // @ts-expect-error: a price may not have come yet
  const unchecked: number = prices[symbol].price;
  const last = price?.live ? price.volume : price?.previous_close;
  return (
    <p title={`${status.connection} ${market?.session} ${error?.code} ${unchecked}`}>
      {symbol} {price?.price} {last} {quotes[symbol]?.open} {bars.at(-1)?.c}
    </p>
  );
}
