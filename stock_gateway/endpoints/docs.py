"""`GET /docs`: the HTTP endpoints, the WebSocket protocol and the metrics, rendered
from `asyncapi.yaml`, the one hand-kept description of the protocol (the tests validate
the server's messages and every example against it), and from `metrics.METRICS`.
Everything is HTML-escaped; `backticks` become inline code and nothing else is markup.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ASYNCAPI = Path(__file__).resolve().parent.parent / "asyncapi.yaml"
_INLINE_CODE = re.compile(r"`([^`]+)`")

STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1f24; overflow-wrap: anywhere; }
code, pre { font: 13px/1.4 ui-monospace, monospace; background: #f3f4f6; border-radius: 4px; }
pre { padding: .6rem .8rem; white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th:first-child { width: 35%; }
.endpoints th:first-child { width: 25%; }
td, th { border-bottom: 1px solid #e5e7eb; padding: .3rem .5rem; text-align: left;
         vertical-align: top; }
h2 { margin-top: 2rem; border-bottom: 1px solid #e5e7eb; }
@media (max-width: 40rem) {
  table, tbody, tr, th, td { display: block; width: auto; }
  th { display: none; }
  td:first-child { border-bottom: none; padding-bottom: 0; font-weight: 600; }
}
"""


@functools.cache
def load_asyncapi() -> dict[str, Any]:
    """The protocol's description, read once per process (every app built in it, tests'
    too, renders /docs from it): one shared document, so callers copy before changing.
    libyaml's safe loader where PyYAML was built with it: the pure-Python one took a
    third of a second of every app's start."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(ASYNCAPI.read_text(encoding="utf-8"), Loader=loader)
    return document


def _json(value: object) -> str:
    return html.escape(json.dumps(value, ensure_ascii=False))


def _text(value: object) -> str:
    """Escaped prose, with `backticks` shown as inline code."""
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(str(value), quote=False))


def _table(rows: Mapping[str, str], head: tuple[str, str]) -> str:
    body = "".join(
        f"<tr><td><code>{html.escape(str(key))}</code></td><td>{_text(text)}</td></tr>"
        for key, text in rows.items()
    )
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>"


def _messages(document: dict[str, Any], operation: str) -> str:
    parts = []
    for reference in document["operations"][operation]["messages"]:
        key = reference["$ref"].rsplit("/", 1)[1]
        message = document["components"]["messages"][key]
        schema_name = message["payload"]["$ref"].rsplit("/", 1)[1]
        schema = document["components"]["schemas"][schema_name]
        examples = "\n".join(json.dumps(example["payload"]) for example in message["examples"])
        parts.append(
            f"<h3><code>{html.escape(message['title'])}</code></h3>"
            f"<p>{_text(message['summary'])}</p>"
            f"<pre>{html.escape(examples)}</pre>"
            f"<details><summary>schema</summary><pre>{_json(schema)}</pre></details>"
        )
    return "".join(parts)


def render_docs(
    document: dict[str, Any], metrics: Mapping[str, str], settings: Mapping[str, str]
) -> str:
    info = document["info"]
    endpoints = "".join(
        f"<tr><td><code>{html.escape(endpoint['path'])}</code></td>"
        f"<td>{_text(endpoint['description'])}"
        + (f"<pre>{_json(endpoint['example'])}</pre>" if "example" in endpoint else "")
        + "</td></tr>"
        for endpoint in info["x-http-endpoints"]
    )
    channel = document["channels"]["prices"]["address"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(info['title'])}: API</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(info['title'])} <small>{html.escape(info['version'])}</small></h1>"
        f"<p>{_text(info['description'])}</p>"
        "<h2>HTTP endpoints</h2>"
        f"<table class='endpoints'><tr><th>endpoint</th><th>answer</th></tr>{endpoints}</table>"
        f"<h2>WebSocket <code>{html.escape(channel)}</code></h2>"
        f"<h3>Client &rarr; server</h3>{_messages(document, 'clientRequests')}"
        f"<h3>Server &rarr; client</h3>{_messages(document, 'serverMessages')}"
        f"<h2>Error codes</h2>{_table(info['x-error-codes'], ('code', 'when'))}"
        f"<h2>Close codes</h2>{_table(info['x-close-codes'], ('code', 'meaning'))}"
        f"<h2>Handshake refusals</h2>{_table(info['x-handshake-refusals'], ('HTTP', 'when'))}"
        f"<h2>Metrics (<code>GET /metrics</code>)</h2>{_table(metrics, ('metric', 'meaning'))}"
        "<h2>Settings</h2><p>Environment variables (or <code>.env</code>) and their "
        "defaults; docs/configuration.md and .env.example say what each one does.</p>"
        f"{_table(settings, ('variable', 'default'))}"
        "<p>Machine-readable: <a href='/asyncapi.yaml'>asyncapi.yaml</a> (AsyncAPI 3).</p>"
        "</body></html>"
    )
