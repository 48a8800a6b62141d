"""The documentation names everything the code can produce: every error code, close
code, metric and setting appears in the README and on /docs (or .env.example), and
/docs shows no raw Markdown."""

from __future__ import annotations

import re

import pytest

import protocol
from endpoints.docs import load_asyncapi, render_docs
from endpoints.metrics import METRICS
from market_data.model import UPSTREAM_STATES
from settings import documented_defaults, environment_names
from tests.helpers import PROJECT

DOCUMENT = load_asyncapi()
INFO = DOCUMENT["info"]
README = (PROJECT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (PROJECT / ".env.example").read_text(encoding="utf-8")
PAGE = render_docs(DOCUMENT, METRICS, documented_defaults())


def test_error_codes_agree_everywhere() -> None:
    documented = set(INFO["x-error-codes"])
    schema = set(DOCUMENT["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    assert documented == schema == set(protocol.ERROR_CODES)
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in README, code
        assert f"<code>{code}</code>" in PAGE, code


def test_close_codes_agree_everywhere() -> None:
    assert set(INFO["x-close-codes"]) == {str(code) for code in protocol.CLOSE_CODES}
    for code in protocol.CLOSE_CODES:
        assert str(code) in README, code
        assert f"<code>{code}</code>" in PAGE, code


def test_upstream_states_are_documented() -> None:
    for state in UPSTREAM_STATES:
        assert f"`{state}`" in README, state


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_documented(name: str) -> None:
    assert f"`{name}`" in README
    assert f"<code>{name}</code>" in PAGE


@pytest.mark.parametrize("name", environment_names())
def test_every_setting_is_documented(name: str) -> None:
    assert re.search(rf"^#? ?{name}=", ENV_EXAMPLE, re.MULTILINE), f"{name} not in .env.example"
    assert f"`{name}`" in README, f"{name} not in README"
    assert f"<code>{name}</code>" in PAGE, f"{name} not on /docs"


def test_docs_page_shows_no_raw_markdown_and_lists_every_endpoint() -> None:
    text_only = re.sub(r"<pre>.*?</pre>", "", PAGE, flags=re.DOTALL)
    assert "`" not in text_only
    for path in ("GET /", "GET /health", "GET /metrics", "GET /docs", "GET /demo", "WS /ws"):
        assert f"<code>{path}</code>" in PAGE, path
    assert "<code>GET /asyncapi.yaml</code>" in PAGE
    root = next(e for e in INFO["x-http-endpoints"] if e["path"] == "GET /")
    assert root["example"]["demo"] == "/demo"
