"use client";
// app/page.tsx: live prices and a candle chart from the stock price gateway.
import { useState } from "react";
import type { Bar } from "@/lib/stock-gateway/stock-client";
import { useCandles, useStockPrices } from "@/lib/stock-gateway/stock-hooks";

const SYMBOLS = ["AAPL", "MSFT", "BINANCE:BTCUSDT"];

export default function Page() {
  const { prices, market, status, error } = useStockPrices(SYMBOLS);
  const [charted, setCharted] = useState(SYMBOLS[0]);
  const { bars } = useCandles(charted, "1s"); // or "1m", "5m"
  return (
    <main style={{ fontFamily: "system-ui", maxWidth: 640, margin: "2rem auto" }}>
      <p>
        gateway <b id="connection">{status.connection}</b> · upstream{" "}
        <b id="upstream">{status.upstream ?? "unknown"}</b> · market <b>{market?.session ?? "unknown"}</b>
      </p>
      {error && <p role="alert">{error.message}</p>}
      <table>
        <tbody>
          {SYMBOLS.map((symbol) => {
            const price = prices[symbol];
            return (
              <tr key={symbol} data-symbol={symbol} onClick={() => setCharted(symbol)}>
                <th>{symbol}</th>
                <td className="price">{price ? price.price.toFixed(2) : "—"}</td>
                <td>{price?.change_percent != null ? `${price.change_percent.toFixed(2)}%` : ""}</td>
                <td>{price && !price.live ? "last close" : ""}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h2>{charted}</h2>
      <Candles bars={bars} />
    </main>
  );
}

function Candles({ bars }: { bars: Bar[] }) {
  const width = 600;
  const height = 200;
  if (bars.length === 0) return <p>waiting for trades…</p>;
  const high = Math.max(...bars.map((bar) => bar.h));
  const low = Math.min(...bars.map((bar) => bar.l));
  const y = (price: number) => (high === low ? height / 2 : ((high - price) / (high - low)) * height);
  const step = width / Math.max(bars.length, 30);
  return (
    <svg className="candles" width={width} height={height} data-bars={bars.length}>
      {bars.map((bar, i) => {
        const color = bar.c >= bar.o ? "#16a34a" : "#dc2626";
        const x = i * step + step / 2;
        return (
          <g key={bar.t}>
            <line x1={x} x2={x} y1={y(bar.h)} y2={y(bar.l)} stroke={color} />
            <rect
              x={x - step * 0.35}
              width={step * 0.7}
              y={y(Math.max(bar.o, bar.c))}
              height={Math.max(1, Math.abs(y(bar.o) - y(bar.c)))}
              fill={color}
            />
          </g>
        );
      })}
    </svg>
  );
}
