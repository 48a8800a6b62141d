"""The bar store BAR_STORE_URL names, opened at start-up, and the recorder that writes it.

A store that cannot be used because it is misconfigured (a URL of no known kind, a
path where no file can be written, a database that refuses the connection) stops the
start-up with a ConfigError naming BAR_STORE_URL. A SQLite file that is corrupt does
not: prices must not stop for damaged bar data, so the gateway starts with the store
`unusable` (bars in memory only, /health and the log degraded and naming the repair,
docs/operations.md "The bar store"). A clean shutdown writes every bar, bounded by
SHUTDOWN_FLUSH_SECONDS so a hung store cannot hold the shutdown.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from stock_gateway.bars.book import MAX_BAR_BYTES, MAX_OPEN_BARS, BarBook, Interval
from stock_gateway.bars.recorder import BarRecorder, open_store
from stock_gateway.bars.store import CorruptStore, StoreError, default_url
from stock_gateway.runtime.logs import get_logger
from stock_gateway.settings import ConfigError, Settings

logger = get_logger(__name__)
SHUTDOWN_FLUSH_SECONDS = 15.0


async def open_recorder(
    settings: Settings, stack: AsyncExitStack, book: BarBook | None
) -> BarRecorder:
    """The store BAR_STORE_URL names, opened (ConfigError naming the setting if it
    cannot be), and its recorder; a clean shutdown writes every bar, the open ones of
    `book` too (None on a cluster: the leader writes its own as it stops leading)."""
    store = open_store(settings.bar_store_url or default_url(settings.demo))
    corrupt = None
    try:
        await store.open()
        await store.claim("demo" if settings.demo else "finnhub")
    except CorruptStore as exc:  # damaged data: prices must not stop for it
        corrupt = str(exc)
    except StoreError as exc:  # a misconfiguration: said at once
        raise ConfigError(f"BAR_STORE_URL: the bar store cannot be used: {exc}") from None
    stack.push_async_callback(store.close)
    recorder = BarRecorder(store, retention(settings))
    if corrupt is not None:
        logger.error("BAR_STORE_URL: starting without the bar store: %s", corrupt)
        recorder.unusable(corrupt)

    async def flush() -> None:
        recorder.stop()
        if book is not None:
            recorder.open_bars_of(book)
        try:
            async with asyncio.timeout(SHUTDOWN_FLUSH_SECONDS):  # a hung store: give up
                written = await recorder.flush()
        except TimeoutError:
            written = False
        if not written:
            logger.error("bar store: %d bars not written at shutdown", recorder.backlog)

    stack.push_async_callback(flush)  # after the core tasks stop, before the store closes
    logger.info("bar store: %s", store.name)
    return recorder


def retention(settings: Settings) -> dict[Interval, float]:
    """Seconds stored bars are kept, per interval."""
    day = 86_400.0
    return {
        "1s": settings.bar_retention_1s_seconds,
        "1m": settings.bar_retention_1m_days * day,
        "5m": settings.bar_retention_days * day,
        "15m": settings.bar_retention_days * day,
        "30m": settings.bar_retention_days * day,
        "1h": settings.bar_retention_days * day,
        "1d": settings.bar_retention_1d_days * day,
    }


def warn_if_histories_outgrow_unread_output(settings: Settings) -> None:
    # A client is cut once more than MAX_UNREAD_OUTPUT waits for it, and a history is
    # written whole: one that may not fit would cut readers too (docs/limits.md).
    largest = (settings.bar_history + MAX_OPEN_BARS) * MAX_BAR_BYTES
    if largest > settings.max_unread_output // 2:
        logger.warning(
            "BAR_HISTORY=%d makes histories of up to %d bytes, over half of "
            "MAX_UNREAD_OUTPUT=%d: clients may be cut while they read one; raise "
            "MAX_UNREAD_OUTPUT or lower BAR_HISTORY",
            settings.bar_history,
            largest,
            settings.max_unread_output,
        )
