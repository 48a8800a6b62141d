"""What a user installs is what the suite tests: the locks cover every distribution in
this virtualenv at the locked versions (within setup.cfg's ranges), and the wheel `pip
install .` builds gives a `stock-gateway` command that serves from any directory, with
the spine's three modules and one package as its only top-level names."""

from __future__ import annotations

import asyncio
import configparser
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.helpers import PROJECT, free_port, gateway_subprocess

LOCKS = PROJECT / "requirements"
PROJECT_NAME = "stock-gateway"
TOP_LEVEL = {"gateway", "finnhub_feed", "hub", "stock_gateway"}
# The installer's own distribution, which the virtualenv brings (not the project's).
INSTALLER = {"pip"}


def locked(name: str) -> dict[str, str]:
    """A lock file's pins: canonical name -> version."""
    text = (LOCKS / name).read_text(encoding="utf-8")
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.MULTILINE)
    return {canonicalize_name(pin): version for pin, version in pins}


def _in_the_checkout(dist: metadata.Distribution) -> bool:
    """The project's own metadata that a build left in the checkout (an *.egg-info)."""
    where = Path(str(dist.locate_file(""))).resolve()
    return where == PROJECT


def test_every_installed_distribution_is_locked_at_its_version() -> None:
    pins = locked("test.lock")
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if not _in_the_checkout(dist)
    }
    for name in (PROJECT_NAME, *INSTALLER):
        installed.pop(canonicalize_name(name), None)
    unlocked = {name: version for name, version in installed.items() if name not in pins}
    assert not unlocked, f"installed but not in requirements/test.lock: {unlocked}"
    differing = {
        name: (version, pins[name]) for name, version in installed.items() if pins[name] != version
    }
    assert not differing, f"installed version differs from the lock's: {differing}"


def test_the_gateways_lock_is_the_test_locks_runtime_part() -> None:
    runtime, everything = locked("gateway.lock"), locked("test.lock")
    assert runtime, "requirements/gateway.lock pins nothing"
    assert {name: everything.get(name) for name in runtime} == runtime
    for lock in ("gateway.lock", "test.lock"):
        text = (LOCKS / lock).read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1])
        pinned = [entry for entry in entries if "==" in entry.split("\n", 1)[0]]
        assert all("--hash=sha256:" in entry for entry in pinned), f"{lock}: a pin has no hash"


def test_the_locked_versions_are_within_setup_cfgs_ranges() -> None:
    config = configparser.ConfigParser()
    config.read(PROJECT / "setup.cfg")
    declared = config["options"]["install_requires"] + config["options.extras_require"]["test"]
    pins = locked("test.lock")
    for line in declared.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is declared but not locked"
        assert requirement.specifier.contains(version, prereleases=True), (line, version)


def _build_wheel(into: Path) -> Path:
    """The wheel `pip install .` would build, from a copy of the source (setuptools
    writes build/ and *.egg-info/ beside the sources it builds)."""
    source = into / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "gateway.py", "hub.py"):
        shutil.copy(PROJECT / name, source / name)
    shutil.copy(PROJECT / "finnhub_feed.py", source / "finnhub_feed.py")
    shutil.copytree(
        PROJECT / "stock_gateway",
        source / "stock_gateway",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(into), str(source)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    [wheel] = into.glob("stock_gateway-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh virtualenv with the wheel installed (its dependencies: this virtualenv's
    locked ones, reached through a .pth line, as no test may use the network); the
    wheel and the new environment's bin directory."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    fresh = work / "venv"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # A plain path, not a site directory: the checkout's editable install stays out.
    (Path(site) / "locked-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    return wheel, fresh / "bin"


@pytest.mark.slow
def test_the_wheels_top_level_names_are_the_spine_and_one_package(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, bin_dir = installed
    with zipfile.ZipFile(wheel) as archive:
        names = {name.split("/", 1)[0].removesuffix(".py") for name in archive.namelist()}
        data = set(archive.namelist())
    assert {name for name in names if not name.endswith(".dist-info")} == TOP_LEVEL
    assert "stock_gateway/asyncapi.yaml" in data
    assert "stock_gateway/static/stock-client.js" in data
    # The fresh environment imports the installed modules, not the checkout's.
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import gateway, stock_gateway, hub; print("
         "gateway.__file__, stock_gateway.__file__, hub.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(bin_dir.parent)) for path in where), where


@pytest.mark.slow
async def test_stock_gateway_help_lists_the_options(installed: tuple[Path, Path]) -> None:
    _, bin_dir = installed
    process = await asyncio.create_subprocess_exec(
        str(bin_dir / "stock-gateway"), "--help", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 0
    for option in ("--demo", "--host", "--port"):
        assert option in output.decode()


@pytest.mark.slow
async def test_the_installed_command_serves_the_demo_from_an_empty_directory(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    port = free_port()
    command = (str(bin_dir / "stock-gateway"), "--demo")
    env = {"BAR_STORE_URL": "memory://"}
    async with (
        gateway_subprocess(tmp_path, port, command, env) as gateway,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{port}"
        for path, needle in (
            ("/health", '"demo":true'),
            ("/demo", "<html"),
            ("/docs", "price_update"),
            ("/static/stock-client.js", "subscribe"),
            ("/asyncapi.yaml", "asyncapi:"),
        ):
            async with session.get(base + path) as response:
                assert response.status == 200, path
                assert needle in (await response.text()).replace(" ", ""), path
        assert "SIMULATED" in gateway.output
