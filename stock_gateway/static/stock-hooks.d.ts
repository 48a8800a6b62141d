// Types for stock-hooks.js: React hooks over stock-client.js (see docs/browser-client.md).
import type {
  Bar,
  ConnectionStatus,
  Interval,
  MarketMessage,
  PriceData,
  QuoteData,
  StockClientError,
} from "./stock-client.js";

export interface GatewayOptions {
  /** ws:// or wss:// address of /ws; default: NEXT_PUBLIC_GATEWAY_WS (a clear error without either). */
  url?: string;
  /** At most one update per symbol this often, the newest (default 250); 0: every trade. */
  throttleMs?: number;
  /** Updates grouped into one frame at most this often (default 0: off). */
  batchMs?: number;
  /** A fresh signed token (JWT), when the gateway verifies them: on connect and on "expiring". */
  getToken?: () => Promise<string> | string;
}

/** A symbol's price: a live trade, or (before it trades, say the market is shut) its quote. */
/** `feed`: how it came; "sampled" and "polled" prices may be delayed (past the upstream's cap). */
export type Price =
  | (PriceData & { live: true; feed: "live" | "sampled" })
  | (QuoteData & { live: false; feed: "polled" });

export interface StockPrices {
  prices: { [symbol: string]: Price | undefined };
  quotes: { [symbol: string]: QuoteData | undefined };
  /** The market's session; null until the gateway says. */
  market: MarketMessage | null;
  status: ConnectionStatus;
  /** The last refusal concerning these symbols (or none in particular). */
  error: StockClientError | null;
}

export interface CandleOptions extends GatewayOptions {
  /** The newest bars kept (default 500). */
  maxBars?: number;
}

export interface Candles {
  /** Oldest first; the last may be the open bar. */
  bars: Bar[];
  status: ConnectionStatus;
  error: StockClientError | null;
}

/** Live prices, quotes, the market's session and the connection's status for `symbols`. */
export declare function useStockPrices(symbols: readonly string[], options?: GatewayOptions): StockPrices;

/** A symbol's bars in one interval (default `1m`): history, then live and final bars. */
export declare function useCandles(
  symbol: string | null | undefined,
  interval?: Interval,
  options?: CandleOptions,
): Candles;
