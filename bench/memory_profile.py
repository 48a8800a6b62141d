"""Where a connected client's memory goes: `./dev python -m bench.memory_profile 2000`.

Runs the gateway in this process under tracemalloc, on the simulator, on 127.0.0.1;
a separate process opens N WebSocket clients that subscribe to 5 symbols each and
keep reading. The heap is compared before and after they connect, and the growth
per client is printed by file and by line. (tracemalloc slows the process and adds
its own bookkeeping to RSS: read the heap figures, not the RSS one.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc

import uvicorn

from gateway import create_app, uvicorn_options
from stock_gateway.settings import Settings
from stock_gateway.simulator.market import MarketSimulator, rest_url, serve
from tests.support.helpers import free_port

CLIENTS = """
import asyncio, sys, aiohttp, orjson
async def main(url, n):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for i in range(n):
            ws = await session.ws_connect(url)
            symbols = [f"C{(i * 5 + k) % 50:03d}" for k in range(5)]
            await ws.send_str(orjson.dumps({"action": "subscribe", "symbols": symbols}).decode())
            sockets.append(ws)
        print("connected", flush=True)
        async def drain(ws):
            async for _ in ws:
                pass
        await asyncio.gather(*(drain(ws) for ws in sockets))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def profile(clients: int, top: int) -> None:
    simulator = MarketSimulator(rate=0, token="profile")
    async with serve(simulator) as url:
        port = free_port()
        settings = Settings(
            finnhub_api_key="profile",
            finnhub_ws_url=url,
            finnhub_rest_url=rest_url(url),
            rest_enabled=False,
            log_level="WARNING",
            max_connections_per_address=1_000_000,
            address_handshake_rate=1e6,
            address_handshake_burst=1_000_000,
            max_symbols_per_address=1_000_000,
            new_symbols_per_address=1_000_000,
        )
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, lifespan="on",
            log_config=None, **uvicorn_options(settings),
        )  # fmt: skip
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        async with asyncio.timeout(10):
            while not server.started:  # uvicorn offers no event for this
                assert not serving.done(), "the gateway failed to start"
                await asyncio.sleep(0.05)
        gc.collect()
        before = tracemalloc.take_snapshot()
        load = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENTS, f"ws://127.0.0.1:{port}/ws", str(clients),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert load.stdout is not None
        if await load.stdout.readline() != b"connected\n":
            raise SystemExit("the load process failed")
        await asyncio.sleep(2)  # let subscriptions settle
        gc.collect()
        after = tracemalloc.take_snapshot()
        load.kill()
        await load.wait()
        server.should_exit = True
        await serving
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    lines = [f"{clients} clients: {total / clients / 1024:.1f} KiB of Python heap per client"]
    by_file: dict[str, int] = {}
    for stat in stats:
        name = stat.traceback[0].filename.split("site-packages/")[-1].split("/lib/python3")[-1]
        by_file[name] = by_file.get(name, 0) + stat.size_diff
    lines.append("by file (bytes per client):")
    for name, size in sorted(by_file.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {size / clients:8.0f}  {name}")
    lines.append("by line (bytes per client):")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
        lines.append(f"  {stat.size_diff / clients:8.0f}  {where}")
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("clients", type=int, nargs="?", default=2000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    tracemalloc.start(1)
    asyncio.run(profile(args.clients, args.top))


if __name__ == "__main__":
    main()
