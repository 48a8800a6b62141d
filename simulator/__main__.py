"""`python -m simulator`: the simulator on its own, as a stand-in Finnhub."""

from simulator.market import main

main()
