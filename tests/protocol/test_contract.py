"""asyncapi.yaml is the protocol's one description: its examples must hold, and the
code must agree with it (every message the server sends in the other tests is checked
in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stock_gateway import protocol
from stock_gateway.endpoints.docs import load_asyncapi, render_docs
from stock_gateway.endpoints.metrics import METRICS
from stock_gateway.endpoints.ws_requests import PARSERS, WsRequests, parse_client_message
from stock_gateway.market_data.model import UPSTREAM_STATES
from stock_gateway.settings import documented_defaults
from tests.support.contract import assert_server_message, validator
from tests.support.fakes import make_hub
from tests.support.helpers import GatewayUnderTest

DOCUMENT = load_asyncapi()
MESSAGES = DOCUMENT["components"]["messages"]
CLIENT_MESSAGES = {
    "subscribe",
    "unsubscribe",
    "ping",
    "options",
    "auth",
    "subscribeBars",
    "unsubscribeBars",
}


def examples() -> list[tuple[str, Any]]:
    return [(name, example["payload"]) for name, m in MESSAGES.items() for example in m["examples"]]


@pytest.mark.parametrize(("name", "payload"), examples())
def test_every_documented_example_is_valid(name: str, payload: Any) -> None:
    if name in CLIENT_MESSAGES:
        errors = list(validator("ClientMessage").iter_errors(payload))
        assert not errors, errors[0].message
        request = parse_client_message(orjson.dumps(payload).decode())
        assert request.action == payload["action"]
    else:
        assert_server_message(payload)


def test_the_schemas_agree_with_the_code() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["Symbol"]["pattern"] == f"^{protocol.SYMBOL_PATTERN.pattern}$"
    documented_codes = set(schemas["Error"]["properties"]["code"]["enum"])
    assert documented_codes == set(DOCUMENT["info"]["x-error-codes"])
    assert set(schemas["Status"]["properties"]["upstream"]["enum"]) == set(UPSTREAM_STATES)
    # Messages the code builds are valid as built.
    for frame in (
        protocol.connection_message("6f1c1f9e-3c4e-4a4e-9a55-2b7f0d0c3a11"),
        protocol.status_message("unauthorized"),
        protocol.subscription_message("subscribed", ["AAPL"]),
        protocol.price_update_message("AAPL", 1.5, 0, 1_700_000_000_000),
        protocol.PONG,
        protocol.invalid_symbols_error(["<b>"]),
        protocol.auth_message("expiring", "user-42", 60),
    ):
        assert_server_message(orjson.loads(frame.payload))


def test_a_message_outside_the_contract_is_caught() -> None:
    with pytest.raises(AssertionError):
        assert_server_message({"type": "price_update", "symbol": "AAPL", "data": {"price": 1}})
    with pytest.raises(AssertionError):
        assert_server_message({"type": "pong", "extra": True})


async def test_docs_page_is_rendered_from_the_protocol_file(gateway: GatewayUnderTest) -> None:
    async with gateway.session.get(gateway.base_url + "/docs") as response:
        assert response.status == 200
        page = await response.text()
    assert page == render_docs(DOCUMENT, METRICS, documented_defaults())
    for code in DOCUMENT["info"]["x-error-codes"]:
        assert code in page
    async with gateway.session.get(gateway.base_url + "/asyncapi.yaml") as response:
        assert response.status == 200
        assert (await response.text()).startswith("asyncapi: 3.0.0")


def _one_of(name: str) -> list[str]:
    schemas = DOCUMENT["components"]["schemas"]
    return [ref["$ref"].rsplit("/", 1)[-1] for ref in schemas[name]["oneOf"]]


def test_the_message_tables_agree_with_the_schemas() -> None:
    """Server message type -> schema, and client action -> parser and handler: a message
    type or action added to the code without its schema (or the other way) fails here."""
    schemas = DOCUMENT["components"]["schemas"]
    documented = {
        schemas[name]["properties"]["type"]["const"]: name for name in _one_of("ServerMessage")
    }
    assert documented == protocol.MESSAGE_SCHEMAS
    actions = {schemas[name]["properties"]["action"]["const"] for name in _one_of("ClientMessage")}
    assert actions == set(PARSERS)
    handled = set(WsRequests(make_hub()).handlers) | {"auth"}  # auth: the session's own
    assert handled == set(PARSERS)
