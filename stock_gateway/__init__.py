"""The stock-price gateway's parts below the spine (`gateway`, `finnhub_feed`, `hub` at
the top level): the contract, the settings, the wiring, and one subpackage per purpose.
Importing this package starts nothing."""
