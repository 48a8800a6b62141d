"""The simulator's reference data, in Finnhub's shapes: company profiles, basic
financials, company and market news, the earnings calendar, analysts' recommendations,
peers, symbol search and market holidays. Plausible and deterministic: the same
question gets the same answer (derived from the symbol and the dates asked for; market
news from the current UTC day). Pure functions of the query; no I/O, no clock but the
day's date.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from stock_gateway.simulator.prices import reference_price

Query = Mapping[str, str]
DAY = 86_400

COMPANIES = {
    "AAPL": ("Apple Inc", "Technology", "NASDAQ NMS - GLOBAL MARKET", "1980-12-12"),
    "MSFT": ("Microsoft Corp", "Technology", "NASDAQ NMS - GLOBAL MARKET", "1986-03-13"),
    "NVDA": ("NVIDIA Corp", "Semiconductors", "NASDAQ NMS - GLOBAL MARKET", "1999-01-22"),
    "AMZN": ("Amazon.com Inc", "Retail", "NASDAQ NMS - GLOBAL MARKET", "1997-05-15"),
    "GOOGL": ("Alphabet Inc", "Media", "NASDAQ NMS - GLOBAL MARKET", "2004-08-19"),
    "META": ("Meta Platforms Inc", "Media", "NASDAQ NMS - GLOBAL MARKET", "2012-05-18"),
    "TSLA": ("Tesla Inc", "Automobiles", "NASDAQ NMS - GLOBAL MARKET", "2010-06-29"),
    "BRK.B": ("Berkshire Hathaway Inc", "Financial Services", "NEW YORK STOCK EXCHANGE, INC.",
              "1996-05-09"),
}  # fmt: skip
HOLIDAYS = (
    ("New Year's Day", "01-01"),
    ("Independence Day", "07-04"),
    ("Christmas", "12-25"),
)
HEADLINES = (
    "{name} shares move as investors weigh the quarter ahead",
    "Analysts revisit {name} targets after sector rally",
    "{name} announces new product line",
    "What {name}'s latest filing says about margins",
)


def _hash(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def _company(symbol: str) -> tuple[str, str, str, str]:
    known = COMPANIES.get(symbol)
    if known is not None:
        return known
    return (
        f"{symbol.title()} Holdings",
        "Industrials",
        "NEW YORK STOCK EXCHANGE, INC.",
        "2001-06-01",
    )


def _symbol(query: Query) -> str:
    return query.get("symbol", "").strip().upper()


def _day(raw: str | None, default: date) -> date:
    try:
        return date.fromisoformat(raw) if raw else default
    except ValueError:
        return default


def _shares(symbol: str) -> float:
    return round(1000 + _hash(symbol, "shares") % 20_000, 2)  # millions


def profile2(query: Query) -> Any:
    symbol = _symbol(query)
    if not symbol:
        return {}
    name, industry, exchange, ipo = _company(symbol)
    shares = _shares(symbol)
    slug = name.split()[0].lower().strip(".,")
    return {
        "country": "US",
        "currency": "USD",
        "estimateCurrency": "USD",
        "exchange": exchange,
        "finnhubIndustry": industry,
        "ipo": ipo,
        "logo": f"https://static.example/logos/{symbol}.png",
        "marketCapitalization": round(shares * reference_price(symbol), 2),
        "name": name,
        "phone": f"1{_hash(symbol, 'phone') % 10**10:010d}",
        "shareOutstanding": shares,
        "ticker": symbol,
        "weburl": f"https://www.{slug}.example/",
    }


def metric(query: Query) -> Any:
    symbol = _symbol(query)
    price = reference_price(symbol)
    swing = 1 + (_hash(symbol, "range") % 40) / 100
    return {
        "metric": {
            "10DayAverageTradingVolume": round(5 + _hash(symbol, "volume") % 9500 / 100, 4),
            "52WeekHigh": round(price * swing, 2),
            "52WeekLow": round(price / swing, 2),
            "beta": round(0.6 + _hash(symbol, "beta") % 120 / 100, 4),
            "dividendYieldIndicatedAnnual": round(_hash(symbol, "dividend") % 300 / 100, 4),
            "marketCapitalization": round(_shares(symbol) * price, 2),
            "peTTM": round(8 + _hash(symbol, "pe") % 6000 / 100, 4),
        },
        "metricType": query.get("metric", "all"),
        "series": {},
        "symbol": symbol,
    }


def _news_item(symbol: str, at: int, number: int, category: str) -> dict[str, Any]:
    name = _company(symbol)[0] if symbol else "Wall Street"
    headline = HEADLINES[_hash(symbol, at, number) % len(HEADLINES)].format(name=name)
    ident = _hash(symbol, at, number, "id") % 10**9
    return {
        "category": category,
        "datetime": at,
        "headline": headline,
        "id": ident,
        "image": "",
        "related": symbol,
        "source": ("Simulated Wire", "Example Markets")[ident % 2],
        "summary": f"{headline}. Simulated news for testing.",
        "url": f"https://news.example/{ident}",
    }


def company_news(query: Query) -> Any:
    """Two items a day from `from` to `to` (at most 31 days), newest first, as Finnhub."""
    symbol = _symbol(query)
    today = datetime.now(UTC).date()
    end = _day(query.get("to"), today)
    start = max(_day(query.get("from"), end - timedelta(days=7)), end - timedelta(days=30))
    items = []
    day = end
    while day >= start:
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        for number, hour in enumerate((20, 14)):
            items.append(_news_item(symbol, midnight + hour * 3600, number, "company"))
        day -= timedelta(days=1)
    return items


def news(query: Query) -> Any:
    """Market news: ten items over today's UTC hours so far, newest first."""
    category = query.get("category", "general")
    midnight = int(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    return [_news_item("", midnight + hour * 2100, hour, category) for hour in range(9, -1, -1)]


def earnings_calendar(query: Query) -> Any:
    """Each known company reports once a quarter, on a day of its own."""
    today = datetime.now(UTC).date()
    start = _day(query.get("from"), today)
    end = min(_day(query.get("to"), start + timedelta(days=7)), start + timedelta(days=366))
    wanted = _symbol(query)
    rows = []
    for symbol in [wanted] if wanted else sorted(COMPANIES):
        offset = _hash(symbol, "earnings") % 40
        for year in range(start.year, end.year + 1):
            for quarter in range(1, 5):
                day = date(year, 3 * quarter - 2, 1) + timedelta(days=20 + offset)
                if not start <= day <= end:
                    continue
                estimate = round(0.5 + _hash(symbol, day) % 300 / 100, 2)
                revenue = int(_shares(symbol) * 10**6 * (1 + _hash(symbol, "rev") % 50))
                rows.append({
                    "date": day.isoformat(), "epsActual": None, "epsEstimate": estimate,
                    "hour": ("bmo", "amc")[offset % 2], "quarter": quarter,
                    "revenueActual": None, "revenueEstimate": revenue,
                    "symbol": symbol, "year": year,
                })  # fmt: skip
    rows.sort(key=lambda row: (row["date"], row["symbol"]), reverse=True)
    return {"earningsCalendar": rows}


def recommendation(query: Query) -> Any:
    symbol = _symbol(query)
    first = datetime.now(UTC).date().replace(day=1)
    rows = []
    for months_back in range(4):
        year, month = divmod(first.year * 12 + first.month - 1 - months_back, 12)
        counts = [_hash(symbol, year, month, kind) % 25 for kind in range(5)]
        rows.append({
            "buy": counts[1], "hold": counts[2], "period": date(year, month + 1, 1).isoformat(),
            "sell": counts[3], "strongBuy": counts[0], "strongSell": counts[4] // 5,
            "symbol": symbol,
        })  # fmt: skip
    return rows


def peers(query: Query) -> Any:
    symbol = _symbol(query)
    industry = _company(symbol)[1]
    same = [s for s, company in COMPANIES.items() if company[1] == industry and s != symbol]
    return [symbol, *same] if symbol else []


def search(query: Query) -> Any:
    asked = query.get("q", "").strip().upper()
    found = [
        {"description": name.upper(), "displaySymbol": symbol, "symbol": symbol,
         "type": "Common Stock"}
        for symbol, (name, *_rest) in COMPANIES.items()
        if asked and (asked in symbol or asked in name.upper())
    ]  # fmt: skip
    return {"count": len(found), "result": found}


def market_holiday(query: Query) -> Any:
    exchange = query.get("exchange", "US")
    year = datetime.now(UTC).year
    data = [
        {"atDate": f"{y}-{month_day}", "eventName": name, "tradingHour": ""}
        for y in (year + 1, year)
        for name, month_day in reversed(HOLIDAYS)
    ]
    return {"data": data, "exchange": exchange, "timezone": "America/New_York"}


# Finnhub's path (under /api/v1/) -> its answer to a query.
ENDPOINTS: dict[str, Callable[[Query], Any]] = {
    "stock/profile2": profile2,
    "stock/metric": metric,
    "company-news": company_news,
    "news": news,
    "calendar/earnings": earnings_calendar,
    "stock/recommendation": recommendation,
    "stock/peers": peers,
    "search": search,
    "stock/market-holiday": market_holiday,
}
