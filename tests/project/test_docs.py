"""The documentation names everything the code can produce, and holds together.

Every error code, close code and upstream state appears in docs/protocol.md, every
metric in docs/operations.md, every setting (with its default) in
docs/configuration.md, and all of them on /docs (settings also in .env.example); /docs
shows no raw Markdown. README.md stays short and links every docs page; every relative
link resolves; docs/architecture.md names every module, and only paths that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stock_gateway import protocol
from stock_gateway.endpoints.docs import load_asyncapi, render_docs
from stock_gateway.endpoints.metrics import METRICS
from stock_gateway.market_data.model import UPSTREAM_STATES
from stock_gateway.settings import documented_defaults, environment_names
from tests.support.helpers import PROJECT

DOCUMENT = load_asyncapi()
INFO = DOCUMENT["info"]
DOCS = PROJECT / "docs"
PACKAGE = PROJECT / "stock_gateway"
README = (PROJECT / "README.md").read_text(encoding="utf-8")
PROTOCOL_PAGE = (DOCS / "protocol.md").read_text(encoding="utf-8")
OPERATIONS_PAGE = (DOCS / "operations.md").read_text(encoding="utf-8")
CONFIGURATION_PAGE = (DOCS / "configuration.md").read_text(encoding="utf-8")
ARCHITECTURE_PAGE = (DOCS / "architecture.md").read_text(encoding="utf-8")
ENV_EXAMPLE = (PROJECT / ".env.example").read_text(encoding="utf-8")
PAGE = render_docs(DOCUMENT, METRICS, documented_defaults())
MARKDOWN_FILES = [PROJECT / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200
# Packages documented as a whole; every other package is documented module by module.
WHOLE_PACKAGES = {"tests", "bench"}

_FENCED_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
_PATH_IN_BACKTICKS = re.compile(r"`(\w[\w./-]*(?:\.py|/))`")


def _prose(markdown: str) -> str:
    """Markdown without its fenced code blocks (code may hold brackets and parentheses)."""
    return _FENCED_CODE.sub("", markdown)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in _HEADING.findall(_prose(markdown))
    }


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def _modules() -> list[str]:
    """Every top-level module and package of the project, and every module of a package
    not in WHOLE_PACKAGES, as paths relative to the project."""
    paths = [path.name for path in sorted(PROJECT.glob("*.py"))]
    paths += [path.name for path in sorted(PACKAGE.glob("*.py")) if path.name != "__init__.py"]
    for package in sorted(PACKAGE.glob("*/__init__.py")):
        directory = package.parent
        paths.append(f"{directory.name}/")
        if directory.name not in WHOLE_PACKAGES:
            paths += [
                f"{directory.name}/{module.name}"
                for module in sorted(directory.glob("*.py"))
                if not module.name.startswith("_")
            ]
    return paths


def test_error_codes_agree_everywhere() -> None:
    documented = set(INFO["x-error-codes"])
    schema = set(DOCUMENT["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    assert documented == schema == set(protocol.ERROR_CODES)
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in PROTOCOL_PAGE, code
        assert f"<code>{code}</code>" in PAGE, code


def test_close_codes_agree_everywhere() -> None:
    assert set(INFO["x-close-codes"]) == {str(code) for code in protocol.CLOSE_CODES}
    for code in protocol.CLOSE_CODES:
        assert f"`{code}`" in PROTOCOL_PAGE, code
        assert f"<code>{code}</code>" in PAGE, code


def test_upstream_states_are_documented() -> None:
    for state in UPSTREAM_STATES:
        assert f"`{state}`" in PROTOCOL_PAGE, state


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_documented(name: str) -> None:
    assert f"`{name}`" in OPERATIONS_PAGE
    assert f"<code>{name}</code>" in PAGE


@pytest.mark.parametrize("name", environment_names())
def test_every_setting_is_documented(name: str) -> None:
    assert re.search(rf"^#? ?{name}=", ENV_EXAMPLE, re.MULTILINE), f"{name} not in .env.example"
    assert f"`{name}`" in CONFIGURATION_PAGE, f"{name} not in docs/configuration.md"
    assert f"<code>{name}</code>" in PAGE, f"{name} not on /docs"


def test_configuration_page_has_one_row_per_setting_with_its_default() -> None:
    rows: dict[str, list[str]] = {}
    for line in _table_rows(CONFIGURATION_PAGE):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if re.fullmatch(r"`[A-Z0-9_]+`", cells[0]):
            rows.setdefault(cells[0].strip("`"), []).append(cells[1].strip("`"))
    assert sorted(rows) == sorted(environment_names())
    for name, default in documented_defaults().items():
        assert len(rows[name]) == 1, f"{name} has {len(rows[name])} rows"
        shown = rows[name][0]
        try:
            assert float(shown) == float(default), (name, shown, default)
        except ValueError:
            assert shown == default, (name, shown, default)


def test_docs_page_shows_no_raw_markdown_and_lists_every_endpoint() -> None:
    text_only = re.sub(r"<pre>.*?</pre>", "", PAGE, flags=re.DOTALL)
    assert "`" not in text_only
    for path in ("GET /", "GET /health", "GET /metrics", "GET /docs", "GET /demo", "WS /ws"):
        assert f"<code>{path}</code>" in PAGE, path
    assert "<code>GET /asyncapi.yaml</code>" in PAGE
    root = next(e for e in INFO["x-http-endpoints"] if e["path"] == "GET /")
    assert root["example"]["demo"] == "/demo"


def test_readme_is_short() -> None:
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_links_every_docs_page() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert len(pages) >= 4
    for page in pages:
        assert f"](docs/{page.name})" in README, f"docs/{page.name} is not linked from README"
    assert "](BENCHMARKS.md)" in README


@pytest.mark.parametrize("document", MARKDOWN_FILES, ids=lambda path: path.name)
def test_relative_links_point_to_files_and_headings_that_exist(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in _LINK.findall(_prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            headings = _anchors(linked.read_text(encoding="utf-8"))
            assert anchor in headings, f"{document.name}: {target} names no heading"


def test_architecture_tables_name_only_paths_that_exist() -> None:
    named = _PATH_IN_BACKTICKS.findall("\n".join(_table_rows(ARCHITECTURE_PAGE)))
    assert len(named) >= len(_modules())
    for path in named:
        exists = (PROJECT / path).exists() or (PACKAGE / path).exists()
        assert exists, f"docs/architecture.md names {path}, which is gone"


@pytest.mark.parametrize("path", _modules())
def test_every_module_has_a_row_in_the_architecture_page(path: str) -> None:
    rows = _table_rows(ARCHITECTURE_PAGE)
    assert any(row.startswith(f"| `{path}` |") for row in rows), (
        f"{path} has no row in docs/architecture.md's table of packages and modules"
    )


@pytest.mark.parametrize("path", [path for path in _modules() if "/" not in path.rstrip("/")])
def test_readme_package_map_names_every_top_level_module_and_package(path: str) -> None:
    assert f"| `{path}` |" in README, f"{path} is not in README.md's package map"
