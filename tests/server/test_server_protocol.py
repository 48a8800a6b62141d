"""server/uvicorn_protocols.py: our reliance on uvicorn's internals is explicit and guarded.

The fast path must engage under the documented server options, say once and loudly
when it cannot, and the frames it writes must be what an independent WebSocket
implementation decodes. uvicorn must be inside the version range setup.cfg pins.
"""

from __future__ import annotations

import configparser
import logging

import pytest
import uvicorn
from packaging.requirements import Requirement
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.streams import StreamReader
from websockets.version import version as websockets_version

from stock_gateway.protocol import Frame
from stock_gateway.server.uvicorn_protocols import FAST_PATH_FLAGS
from tests.support.helpers import PROJECT, Market, run_gateway, settings_for, trade


def _pinned(name: str) -> Requirement:
    config = configparser.ConfigParser()
    config.read(PROJECT / "setup.cfg")
    for line in config["options"]["install_requires"].splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).name == name:
            return Requirement(line)
    raise AssertionError(f"{name} is not pinned in setup.cfg")


@pytest.mark.parametrize(
    ("package", "version"),
    [("uvicorn", uvicorn.__version__), ("websockets", websockets_version)],
)
def test_installed_server_is_inside_the_pinned_range(package: str, version: str) -> None:
    requirement = _pinned(package)
    assert requirement.specifier, f"{package} must have a bounded range"
    assert any(spec.operator == "<" for spec in requirement.specifier), "no upper bound"
    assert version in requirement.specifier, f"{package} {version} outside {requirement}"


def _decode(wire: bytes) -> WireFrame:
    reader = StreamReader()
    reader.feed_data(wire)
    parser = WireFrame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: WireFrame = done.value
        assert not reader.buffer, "bytes left after the frame"
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_prebuilt_frames_decode_with_an_independent_parser(length: int) -> None:
    payload = bytes(ord("a") + index % 26 for index in range(length))
    frame = Frame(payload, "test")
    decoded = _decode(frame.wire)
    assert decoded.opcode is Opcode.TEXT and decoded.fin
    assert decoded.data == payload


def test_prebuilt_frames_carry_utf8_text() -> None:
    text = '{"symbol":"€URO","note":"ünïcödé"}'
    decoded = _decode(Frame(text.encode(), "test").wire)
    assert bytes(decoded.data).decode() == text


async def test_fast_path_engages_under_the_documented_options(market: Market) -> None:
    async with run_gateway(settings_for(market)) as gateway:
        clients = [await gateway.connect() for _ in range(3)]
        health = await gateway.health()
        assert health["clients"] == 3
        assert health["clients_fast_path"] == 3, "the fast path did not engage"
        for client in clients:
            await client.subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 10.0)])
        for client in clients:
            assert (await client.expect("price_update"))["data"]["price"] == 10.0


def _fast_path_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("fast path off")]


async def test_another_ws_protocol_falls_back_with_one_warning_naming_the_flags(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Plain uvicorn: its own HTTP and WebSocket protocols, not the gateway's.
    plain = run_gateway(settings_for(market), http="httptools", ws="websockets-sansio")
    async with plain as gateway:
        clients = [await gateway.connect() for _ in range(3)]
        assert (await gateway.health())["clients_fast_path"] == 0
        await clients[0].subscribe("AAPL")
        await market.simulator.wait_for(lambda: "AAPL" in market.simulator.subscribed_symbols())
        await market.simulator.send_trades([trade("AAPL", 11.0)])
        assert (await clients[0].expect("price_update"))["data"]["price"] == 11.0
    warnings = _fast_path_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert FAST_PATH_FLAGS in warnings[0] and "python gateway.py" in warnings[0]


async def test_negotiated_deflate_falls_back_with_one_warning(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with run_gateway(settings_for(market), ws_per_message_deflate=True) as gateway:
        for _ in range(2):
            await gateway.connect(compress=15)
        assert (await gateway.health())["clients_fast_path"] == 0
    warnings = _fast_path_warnings(caplog)
    assert len(warnings) == 1 and "permessage-deflate" in warnings[0], warnings
