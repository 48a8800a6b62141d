"""Logging: one line per event (`key=value` text or JSON), and redaction of secrets.

`configure_logging()` is called once by whoever starts the process (`gateway.main`, or
the lifespan under a plain `uvicorn gateway:app`); when the host already configured
logging (uvicorn's own config, pytest), its handlers are kept and only the gateway's
levels and the redaction filter are applied.

This module must never log anything itself; its filter only ever removes text.
"""

from __future__ import annotations

import json
import logging
import re

# The project's own loggers, whose level LOG_LEVEL sets.
GATEWAY_LOGGERS = (
    "gateway",
    "client_session",
    "server_protocol",
    "hub",
    "client_connection",
    "finnhub_feed",
    "cluster",
    "supervisor",
    "simulator",
)
_QUERY_STRING = re.compile(r"(\s/[^\s?\"]*)\?[^\s\"]*")


class RedactTokens(logging.Filter):
    """uvicorn logs request paths with their query string (`/ws?token=...`, or any
    percent-encoded spelling of it): drop every query string from its lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _QUERY_STRING.sub(r"\1?***", message), ()
        return True


class JsonLogFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Install our handler unless the host already has one; always apply the redaction
    filter to uvicorn's loggers and `level` to ours."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        if log_format == "json":
            handler.setFormatter(JsonLogFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
            )
        root.addHandler(handler)
        root.setLevel(level)
    for name in ("uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in server_logger.filters):
            server_logger.addFilter(RedactTokens())
    for name in GATEWAY_LOGGERS:
        logging.getLogger(name).setLevel(level)
