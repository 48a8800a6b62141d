"""Candles: OHLCV bars built from the trade stream (`book`) and their delivery to
clients (`delivery`).
"""
