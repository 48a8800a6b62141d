"""The protocol contract: messages checked against the schemas in asyncapi.yaml."""

from __future__ import annotations

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from stock_gateway.endpoints.docs import load_asyncapi


@cache
def validator(schema_name: str) -> Draft202012Validator:
    document = load_asyncapi()
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    return Draft202012Validator(root)


def assert_server_message(message: Any) -> None:
    """Fail unless `message` is one of the server messages the protocol file documents."""
    errors = sorted(validator("ServerMessage").iter_errors(message), key=str)
    assert not errors, f"{message} breaks the protocol: {errors[0].message}"
