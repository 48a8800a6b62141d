"""What a Next.js app's `npm run lint` says of the files it copies or follows: ESLint
with eslint-config-next's core web vitals and TypeScript rules (eslint.config.mjs, as
create-next-app 16 writes it) on the shipped client and hooks and on examples/, which
must pass without a warning (react-hooks/set-state-in-effect among the rules)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import node
from tests.support.helpers import PROJECT

pytestmark = pytest.mark.slow

STATIC = PROJECT / "stock_gateway" / "static"
LINTED = [
    STATIC / "stock-client.js",
    STATIC / "stock-client.d.ts",
    STATIC / "stock-hooks.js",
    STATIC / "stock-hooks.d.ts",
    PROJECT / "examples",
]


def test_next_js_lint_rules_pass_on_the_shipped_hooks_and_the_examples(tmp_path: Path) -> None:
    eslint = node.require(node.ESLINT)
    report = tmp_path / "eslint.json"
    done = subprocess.run(
        [eslint, "--max-warnings=0", "--format=json", f"--output-file={report}", *LINTED],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.exists(), f"eslint reported nothing:\n{done.stdout}{done.stderr}"
    results = json.loads(report.read_text(encoding="utf-8"))
    problems = [
        f"{Path(result['filePath']).relative_to(PROJECT)}:{message['line']} "
        f"{message['ruleId']}: {message['message'].splitlines()[0]}"
        for result in results
        for message in result["messages"]
    ]
    assert problems == [], "\n".join(problems)
    assert done.returncode == 0, done.stdout + done.stderr
    # It passed by linting them, not by finding nothing to lint.
    linted = {Path(result["filePath"]).name for result in results}
    assert {"stock-client.js", "stock-hooks.js", "page.tsx", "typed-usage.tsx"} <= linted


def test_the_lint_applies_next_js_hook_rules() -> None:
    """The check above could pass without Next.js's rules for hooks and pages."""
    eslint = node.require(node.ESLINT)
    config = json.loads(node.run(eslint, "--print-config", STATIC / "stock-hooks.js"))
    for rule in ("react-hooks/set-state-in-effect", "react-hooks/rules-of-hooks"):
        assert config["rules"][rule][0] == 2, rule  # an error, as in a Next.js app
    assert "@next/next/no-html-link-for-pages" in config["rules"]
