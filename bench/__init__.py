"""The fan-out benchmark: `python -m bench` (see BENCHMARKS.md).

Everything runs as separate processes on 127.0.0.1: the simulator (`python -m
stock_gateway.simulator --sequenced`), the gateway exactly as deployed (`uvicorn
gateway:app`, its bar store in a temporary directory), and load clients
(`bench/load.py`, picows). Every scenario is bounded in time and count.
"""
