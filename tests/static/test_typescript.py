"""The browser client's TypeScript declarations cannot drift from the protocol or the code.

The message types in static/stock-client.d.ts are what tests/support/protocol_types.py writes
from asyncapi.yaml (a changed schema fails here until they are rewritten); every
documented example type-checks against its message's type; every option and method of
stock-client.js and every hook of stock-hooks.js is declared; and the examples (the
Next.js page of docs/browser-client.md among them) pass `tsc --noEmit`."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stock_gateway.endpoints.docs import load_asyncapi
from tests.support import node
from tests.support.docs_blocks import docs_code_blocks
from tests.support.helpers import PROJECT
from tests.support.protocol_types import DECLARATIONS, Writer, committed_block, message_types

STATIC = PROJECT / "stock_gateway" / "static"
CLIENT_JS = (STATIC / "stock-client.js").read_text(encoding="utf-8")
HOOKS_JS = (STATIC / "stock-hooks.js").read_text(encoding="utf-8")
CLIENT_TYPES = DECLARATIONS.read_text(encoding="utf-8")
HOOKS_TYPES = (STATIC / "stock-hooks.d.ts").read_text(encoding="utf-8")
EXAMPLE_PAGE = PROJECT / "examples" / "nextjs" / "app" / "page.tsx"


def declared_block(text: str, opening: str) -> str:
    """The body of `opening { ... }` in a declaration file (no nested braces at its level)."""
    start = text.index(opening)
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"{opening} is never closed")


def test_the_message_types_are_those_asyncapi_yaml_describes() -> None:
    assert committed_block(CLIENT_TYPES) == message_types(load_asyncapi()), (
        "static/stock-client.d.ts's message types differ from asyncapi.yaml's schemas: "
        "rewrite them with `./dev python -m tests.support.protocol_types`"
    )


def _add_a_field(schemas: dict[str, Any]) -> None:
    data = schemas["PriceUpdate"]["properties"]["data"]
    data["properties"]["exchange"] = {"type": "string"}
    data["required"].append("exchange")


def _make_a_field_optional(schemas: dict[str, Any]) -> None:
    schemas["Quote"]["required"].remove("data")


def _widen_an_enum(schemas: dict[str, Any]) -> None:
    schemas["Market"]["properties"]["session"]["enum"].append("overnight")


def _retype_a_field(schemas: dict[str, Any]) -> None:
    schemas["Bar"]["properties"]["t"] = {"type": "string"}


def _add_a_message(schemas: dict[str, Any]) -> None:
    schemas["Trade"] = {"type": "object", "properties": {"type": {"const": "trade"}}}


CHANGES = [_add_a_field, _make_a_field_optional, _widen_an_enum, _retype_a_field, _add_a_message]


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_message_shape_no_longer_matches_the_committed_types(
    change: Callable[[dict[str, Any]], None],
) -> None:
    """What the check above compares is sensitive to every kind of change a schema sees."""
    document = copy.deepcopy(load_asyncapi())
    change(document["components"]["schemas"])
    assert committed_block(CLIENT_TYPES) != message_types(document)


def test_every_option_and_method_of_the_client_is_declared() -> None:
    options = set(re.findall(r"@param \{[^}]*\} \[options\.(\w+)\]", CLIENT_JS))
    options |= set(re.findall(r"this\.options\.(\w+)", CLIENT_JS))
    options |= set(re.findall(r"const \{ ([\w, ]+) \} = this\.options", CLIENT_JS)[0].split(", "))
    assert {"onPrice", "onBar", "getToken", "throttleMs"} <= options  # the patterns still read
    declared = declared_block(CLIENT_TYPES, "export interface StockClientOptions")
    for option in options:
        assert re.search(rf"\n  {option}\?: ", declared), f"option {option} is not declared"

    body = declared_block(CLIENT_JS, "export class StockClient")
    methods = set(re.findall(r"\n  (?:async )?(\w+)\([^)]*\) \{", body)) - {"constructor"}
    assert {"subscribe", "receive", "close"} <= methods
    declaration = declared_block(CLIENT_TYPES, "export declare class StockClient")
    for method in methods:
        assert re.search(rf"\n  (?:private )?{method}[(;]", declaration), f"{method} undeclared"
    for field in set(re.findall(r"\n    this\.(\w+) = ", body)):
        assert re.search(rf"\n  (?:readonly |private ){field}[:;]", declaration), field


def test_every_hook_is_declared_and_the_module_is_a_client_module() -> None:
    hooks = set(re.findall(r"^export function (\w+)", HOOKS_JS, re.MULTILINE))
    assert hooks == {"useStockPrices", "useCandles"}
    for hook in hooks:
        assert f"export declare function {hook}(" in HOOKS_TYPES
    # Next.js reads the directive only as the module's first statement.
    assert HOOKS_JS.startswith('"use client";\n')


def test_the_documented_page_is_the_example_that_type_checks() -> None:
    """The Next.js page in docs/browser-client.md is examples/nextjs/app/page.tsx, which
    tsc checks below and tests/static/test_react_hooks.py builds and loads."""
    pages = docs_code_blocks("tsx")
    assert EXAMPLE_PAGE.read_text(encoding="utf-8") in pages


def _examples_module(document: dict[str, Any]) -> str:
    writer = Writer(document)
    names = sorted({writer.type_name(n) for n in document["components"]["schemas"]})
    lines = [f"import type {{ {', '.join(names)} }} from {json.dumps(str(DECLARATIONS))};"]
    for key, message in document["components"]["messages"].items():
        schema = message["payload"]["$ref"].rsplit("/", 1)[-1]
        for index, example in enumerate(message.get("examples", [])):
            payload = json.dumps(example["payload"])
            lines.append(f"export const {key}{index}: {writer.type_name(schema)} = {payload};")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_every_documented_example_type_checks_as_its_message(tmp_path: Path) -> None:
    tsc = node.require(node.TSC)
    module = _examples_module(load_asyncapi())
    assert module.count("export const") >= 20
    options = {"strict": True, "noEmit": True, "target": "es2022", "lib": ["es2022", "dom"]}
    options |= {"types": [], "module": "esnext", "moduleResolution": "bundler"}
    config = {"compilerOptions": options, "files": ["examples.ts"]}
    (tmp_path / "tsconfig.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "examples.ts").write_text(module, encoding="utf-8")
    node.run(tsc, "-p", tmp_path)

    # And a payload outside its type is an error: excess fields are caught.
    wrong = module.replace('"action": "ping"}', '"action": "ping", "extra": 1}', 1)
    (tmp_path / "examples.ts").write_text(wrong, encoding="utf-8")
    with pytest.raises(AssertionError, match="'\"extra\"' does not exist in type 'PingMessage'"):
        node.run(tsc, "-p", tmp_path)


@pytest.mark.slow
def test_the_examples_type_check_against_the_declarations() -> None:
    """examples/: the Next.js page of docs/browser-client.md, and typed-usage.tsx, whose
    @ts-expect-error lines fail the check if a type were `any`."""
    node.run(node.require(node.TSC), "--noEmit", "-p", PROJECT / "examples")
