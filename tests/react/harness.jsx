// The page tests/static/test_react_hooks.py drives: the hooks as shipped (stock_gateway/static/stock-hooks.js),
// bundled by esbuild with React 18 or 19 in development mode, so strict mode runs every
// effect twice. window.harness mounts, updates and unmounts; window.sockets counts the
// WebSockets ever opened (an init script wraps the constructor).
import { Component, StrictMode, useEffect } from "react";
import { createRoot } from "react-dom/client";
import { useCandles, useStockPrices } from "../../stock_gateway/static/stock-hooks.js";

window.effects = 0; // effect runs of <App>: 2 per mount under strict mode

class Boundary extends Component {
  state = { error: null };
  static getDerivedStateFromError(error) {
    return { error };
  }
  render() {
    return this.state.error ? <p id="crash">{this.state.error.message}</p> : this.props.children;
  }
}

function Prices({ url, symbols, id }) {
  const { prices, status } = useStockPrices(symbols, { url, throttleMs: 100 });
  return (
    <section id={id} data-connection={status.connection} data-upstream={status.upstream ?? ""}>
      {symbols.map((symbol) => (
        <p key={symbol} data-symbol={symbol} className="price">
          {prices[symbol] ? String(prices[symbol].price) : "—"}
        </p>
      ))}
    </section>
  );
}

function Chart({ url, symbol }) {
  const { bars } = useCandles(symbol, "1s", { url, throttleMs: 100 });
  return <p id="bars" data-count={bars.length} data-first={bars[0]?.t ?? ""} />;
}

function App({ url, symbols }) {
  useEffect(() => {
    window.effects += 1;
  }, []);
  // Two components on one feed, as a dashboard has: still one socket.
  return (
    <>
      <Prices url={url} symbols={symbols} id="prices" />
      <Prices url={url} symbols={symbols.slice(0, 1)} id="first" />
      <Chart url={url} symbol={symbols[0]} />
    </>
  );
}

const mounted = new Map(); // element id -> root

function render(id, element) {
  let root = mounted.get(id);
  if (!root) {
    const container = document.createElement("div");
    container.id = id;
    document.body.append(container);
    root = createRoot(container);
    mounted.set(id, root);
  }
  root.render(<StrictMode><Boundary>{element}</Boundary></StrictMode>);
}

window.harness = {
  mount: (url, symbols) => render("app", <App url={url} symbols={symbols} />),
  unmount: () => {
    mounted.get("app")?.unmount();
    mounted.delete("app");
    document.getElementById("app")?.remove();
  },
  // Neither { url } nor NEXT_PUBLIC_GATEWAY_WS: the hook says what to do.
  mountWithoutUrl: () => render("nourl", <Prices symbols={["AAPL"]} id="nourl-prices" />),
};
