"""Code blocks of the docs, by language (the TypeScript and React tests check them)."""

from __future__ import annotations

import re
import textwrap

from tests.support.helpers import PROJECT


def docs_code_blocks(language: str) -> list[str]:
    """The fenced blocks of docs/browser-client.md in `language`, dedented."""
    text = BROWSER_CLIENT_PAGE.read_text(encoding="utf-8")
    return [textwrap.dedent(body) for _, fence, body in _FENCED.findall(text) if fence == language]


BROWSER_CLIENT_PAGE = PROJECT / "docs" / "browser-client.md"


_FENCED = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
