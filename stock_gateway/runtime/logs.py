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
from urllib.parse import unquote_plus

# Every logger of the gateway hangs under this one (`gateway.hub`, `gateway.access.tokens`,
# ...), so LOG_LEVEL set on it reaches them all; the simulator, a stand-in Finnhub, has
# its own.
ROOT_LOGGER = "gateway"
LEVELLED_LOGGERS = (ROOT_LOGGER, "simulator")
# Request headers that carry credentials: never logged, whoever logs them.
SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "sec-websocket-protocol"})


# A query parameter whose name (decoded, any case) holds one of these carries a credential.
CREDENTIAL_NAME = re.compile(r"token|key|secret|pass|auth|jwt|session|credential", re.IGNORECASE)
# The same inside a value that itself spells parameters (`x=1%26token%3Dabc`).
EMBEDDED_CREDENTIAL = re.compile(rf"(?:{CREDENTIAL_NAME.pattern})[^=&;]*=", re.IGNORECASE)
_QUERY_SEPARATOR = re.compile(r"([&;])")


def _decoded(text: str) -> str:
    """`text` percent- and plus-decoded until it stops changing (`%256B` is `%6B` is `k`)."""
    for _ in range(4):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def _redact_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    decoded_value = _decoded(value)
    if CREDENTIAL_NAME.search(_decoded(name)) or EMBEDDED_CREDENTIAL.search(decoded_value):
        return f"{name}=***" if equals else "***"
    return parameter


def _without_credentials(value: object) -> object:
    """A request target with its credential-bearing query parameters' values replaced:
    `/bars/GOOG?token=x&interval=1m` -> `/bars/GOOG?token=***&interval=1m`.

    uvicorn passes the parsed path (with its query) as one argument of its access and
    WebSocket log lines. Names are judged decoded and in any case (`TOKEN`, `to%6Ben`,
    `api_key`), every occurrence of a repeated one is replaced, and the raw text after
    the first `?` is split on both `&` and `;`, so no spelling of a token the server
    would accept (percent-encoded, quoted, in an absolute URL) survives.
    """
    if isinstance(value, str) and "?" in value:
        target, query = value.split("?", 1)
        parts = _QUERY_SEPARATOR.split(query)
        parts[::2] = [_redact_parameter(part) for part in parts[::2]]
        return f"{target}?{''.join(parts)}"
    return value


# The package's own name is left out of logger names: `gateway.access.tokens`.
PACKAGE = __name__.split(".")[0]


def get_logger(module: str) -> logging.Logger:
    """The logger of one of the gateway's modules, under the root: `get_logger(__name__)`."""
    return logging.getLogger(f"{ROOT_LOGGER}.{module.removeprefix(PACKAGE + '.')}")


class RedactTokens(logging.Filter):
    """On the server's loggers: drop the credential-bearing query parameters' values
    from every request-target argument, and the value of every credential-bearing
    header argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            redacted = tuple(_without_credentials(arg) for arg in args)
            if len(redacted) == 2 and str(redacted[0]).lower() in SECRET_HEADERS:
                redacted = (redacted[0], "***")  # a websockets-style "< %s: %s" header line
            record.args = redacted
        elif isinstance(record.msg, str) and "?" in record.msg and not args:
            record.msg = " ".join(str(_without_credentials(part)) for part in record.msg.split(" "))
        return True


class OneLineRefusals(logging.Filter):
    """On uvicorn's error logger: a start-up refused for a setting (`ConfigError`) has
    been said in one line by the lifespan; the traceback Starlette hands uvicorn with
    it is dropped, so the operator reads the reason and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Traceback") and "ConfigError: " in message)


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
    for name in ("uvicorn.error", "uvicorn.access", "websockets"):
        server_logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in server_logger.filters):
            server_logger.addFilter(RedactTokens())
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OneLineRefusals) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(OneLineRefusals())
    for name in LEVELLED_LOGGERS:
        logging.getLogger(name).setLevel(level)
