"""The message types of static/stock-client.d.ts, written from asyncapi.yaml's schemas.

The declaration file holds them between two marker lines; everything else in it (the
client's options, callbacks and methods) is written by hand on top of these types.
tests/static/test_typescript.py fails when the committed block differs from what this module
writes from the current asyncapi.yaml, so a message whose shape changes in the protocol
file cannot keep its old type. After changing a schema, rewrite the block with

    ./dev python -m tests.support.protocol_types

Schemas become TypeScript as JSON Schema reads: `const` and `enum` as literal types,
`required` decides `?`, `oneOf` and a list of types as unions, `$ref` as the named type
(or an indexed access such as `PriceUpdateMessage["data"]` for a reference into one).
A schema that is a message's payload is named after it with `Message` appended, so no
name shadows a global of TypeScript's (`Error`); `Symbol` is `StockSymbol` for the
same reason.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from stock_gateway.endpoints.docs import load_asyncapi

DECLARATIONS = (
    Path(__file__).resolve().parents[2] / "stock_gateway" / "static" / "stock-client.d.ts"
)
BEGIN = (
    "// ---- BEGIN messages: from asyncapi.yaml by `./dev python -m tests.support.protocol_types`"
)
END = "// ---- END messages"
RENAMES = {"Symbol": "StockSymbol"}
SCALARS = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean"}
SCALARS |= {"null": "null"}


def _payload_schemas(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Schema name -> the message (title, summary) whose payload it is."""
    found: dict[str, dict[str, Any]] = {}
    for message in document["components"]["messages"].values():
        name = message["payload"]["$ref"].rsplit("/", 1)[-1]
        found.setdefault(name, message)
    return found


class Writer:
    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas: dict[str, Any] = document["components"]["schemas"]
        self.messages = _payload_schemas(document)

    def type_name(self, schema: str) -> str:
        if schema in self.messages and not schema.endswith("Message"):
            return schema + "Message"
        return RENAMES.get(schema, schema)

    def reference(self, pointer: str) -> str:
        parts = pointer.removeprefix("#/components/schemas/").split("/")
        written = self.type_name(parts[0])
        rest = parts[1:]
        while rest:
            step = rest.pop(0)
            if step == "properties":
                written += f"[{json.dumps(rest.pop(0))}]"
            elif step == "items":
                written += "[number]"
            else:
                raise ValueError(f"cannot follow {pointer!r} at {step!r}")
        return written

    def type_of(self, schema: dict[str, Any], indent: str) -> str:
        if "$ref" in schema:
            return self.reference(schema["$ref"])
        if "const" in schema:
            return json.dumps(schema["const"])
        if "enum" in schema:
            return _union([json.dumps(value) for value in schema["enum"]], indent)
        if "oneOf" in schema:
            return _union([self.type_of(option, indent) for option in schema["oneOf"]], indent)
        kinds = schema.get("type", [])
        kinds = kinds if isinstance(kinds, list) else [kinds]
        written = [self._kind(kind, schema, indent) for kind in kinds]
        return _union(written, indent) if written else "unknown"

    def _kind(self, kind: str, schema: dict[str, Any], indent: str) -> str:
        if kind in SCALARS:
            return SCALARS[kind]
        if kind == "array":
            item = self.type_of(schema.get("items", {}), indent)
            return f"({item})[]" if "| " in item else f"{item}[]"
        if kind == "object":
            return self.object_type(schema, indent)
        raise ValueError(f"no TypeScript for JSON Schema type {kind!r}")

    def object_type(self, schema: dict[str, Any], indent: str) -> str:
        required = set(schema.get("required", []))
        inner = indent + "  "
        lines = ["{"]
        for name, prop in schema.get("properties", {}).items():
            if "description" in prop:
                lines.append(f"{inner}/** {prop['description']} */")
            optional = "" if name in required else "?"
            written = self.type_of(prop, inner)
            space = "" if written.startswith("\n") else " "
            lines.append(f"{inner}{name}{optional}:{space}{written};")
        lines.append(indent + "}")
        return "\n".join(lines)

    def declaration(self, schema_name: str) -> str:
        schema = self.schemas[schema_name]
        name = self.type_name(schema_name)
        doc = _doc_comment(self.messages.get(schema_name), schema)
        if schema.get("type") == "object":
            return f"{doc}export interface {name} {self.object_type(schema, '')}"
        written = self.type_of(schema, "")
        space = "" if written.startswith("\n") else " "
        return f"{doc}export type {name} ={space}{written};"


def _union(parts: list[str], indent: str) -> str:
    """On one line when it is short, else one member a line."""
    one_line = " | ".join(parts)
    if len(indent) + len(one_line) <= 72 and "\n" not in one_line:
        return one_line
    return "".join(f"\n{indent}  | {part}" for part in parts)


def _doc_comment(message: dict[str, Any] | None, schema: dict[str, Any]) -> str:
    if message is not None:
        text = f"`{message['title']}`: {' '.join(message['summary'].split())}"
    elif "pattern" in schema:
        text = f"Matches {schema['pattern']}"
    else:
        return ""
    wrapped = textwrap.wrap(text, 86, break_on_hyphens=False)
    return "/**\n" + "".join(f" * {line}\n" for line in wrapped) + " */\n"


def message_types(document: dict[str, Any]) -> str:
    """The generated block, marker lines included."""
    writer = Writer(document)
    body = "\n\n".join(writer.declaration(name) for name in writer.schemas)
    return f"{BEGIN}\n\n{body}\n\n{END}"


def committed_block(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def rewrite(path: Path = DECLARATIONS) -> bool:
    """Replace the block in the declaration file; True if it changed."""
    text = path.read_text(encoding="utf-8")
    fresh = text.replace(committed_block(text), message_types(load_asyncapi()))
    if fresh == text:
        return False
    path.write_text(fresh, encoding="utf-8")
    return True


if __name__ == "__main__":
    changed = rewrite()
    sys.stderr.write(f"{DECLARATIONS.name}: {'rewritten' if changed else 'already current'}\n")
