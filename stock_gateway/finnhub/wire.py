"""Finnhub's REST answers read defensively (`/quote`, `/stock/market-status`), and the
API key kept out of any text that is logged. Pure functions: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, cast

from stock_gateway.market_data.model import SESSIONS, MarketStatus, Quote, Session
from stock_gateway.market_data.trade_wire import is_number

_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE)


def parse_quote(body: Any) -> Quote | None:
    """A quote from `/quote`'s JSON, or None for "no quote": an unknown symbol is
    answered with zeros. `t` is in seconds there; the quote carries milliseconds."""
    if not isinstance(body, dict):
        raise ValueError("a quote must be a JSON object")
    price, previous = _float(body.get("c")) or 0.0, _float(body.get("pc")) or 0.0
    if price <= 0 and previous <= 0:
        return None
    return Quote(
        price=price if price > 0 else previous,
        change=_float(body.get("d")),
        change_percent=_float(body.get("dp")),
        open=_float(body.get("o")) or 0.0,
        high=_float(body.get("h")) or 0.0,
        low=_float(body.get("l")) or 0.0,
        previous_close=max(previous, 0.0),
        timestamp=int(_float(body.get("t")) or 0) * 1000,
    )


def parse_market_status(body: Any, exchange: str) -> MarketStatus:
    """`/stock/market-status`'s JSON. Finnhub says `session: null` when closed; anything
    unknown counts as closed."""
    if not isinstance(body, dict):
        raise ValueError("a market status must be a JSON object")
    session, holiday = body.get("session"), body.get("holiday")
    return MarketStatus(
        exchange=str(body.get("exchange") or exchange),
        is_open=body.get("isOpen") is True,
        session=cast(Session, session) if session in SESSIONS else "closed",
        holiday=holiday if isinstance(holiday, str) and holiday else None,
    )


def _float(value: object) -> float | None:
    return float(value) if is_number(value) else None  # type: ignore[arg-type]


def redact(text: str, secret: str) -> str:
    """Text with the secret (in any letter case) and any `token=` query value masked.
    Redact first, shorten after: a secret cut in half by a length limit still leaks."""
    if secret:
        text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
    return _TOKEN_IN_TEXT.sub(r"\1***", text)
