"""The house's rules, read from the code: no import cycle (the simulator's included), one
order of the parts with every import going down it, one home for
`redis` and for uvicorn's internals, the simulator standing apart, modules of a size a
newcomer reads in one sitting, and every logger under the one root."""

from __future__ import annotations

import ast
import logging
from functools import cache
from pathlib import Path

import pytest

from stock_gateway.runtime.logs import LEVELLED_LOGGERS, configure_logging
from tests.support.helpers import PROJECT

# The one order of the gateway's parts, top to bottom (docs/architecture.md, "Layers"):
# each part imports only parts below it, never one above or beside it, so no two parts
# import each other. A part is a spine module, a module directly in the package, or a
# subpackage; every part is placed here.
LAYERS = (
    "gateway",
    "wiring",
    "endpoints",
    "client_requests",
    "cluster",
    "relay",
    "hub",
    "finnhub_feed",
    "finnhub",
    "simulator",
    "delivery",
    "access",
    "protocol",
    "bars",
    "setting_sources",
    "socket_limits",
    "rest_shares",
    "settings",
    "setting_urls",
    "market_data",
    "server",
    "runtime",
)
MAX_LINES = 350  # a module longer than this wants splitting (by job, not by size)


PACKAGE = PROJECT / "stock_gateway"


def _modules() -> dict[str, Path]:
    """The spine's modules by their names, the package's by theirs less `stock_gateway.`
    (the layers below are the package's subpackages)."""
    found: dict[str, Path] = {path.stem: path for path in sorted(PROJECT.glob("*.py"))}
    for path in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*/*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if name != "__init__":
            found[name.removesuffix(".__init__")] = path
    return found


def _local(name: str) -> str:
    return name.removeprefix("stock_gateway.")


MODULES = _modules()


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every name a module imports (TYPE_CHECKING blocks included), as dotted paths."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(_local(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(_local(node.module))
            names.update(_local(f"{node.module}.{alias.name}") for alias in node.names)
    return frozenset(names)


def project_imports(module: str) -> set[str]:
    return {name for name in imports_of(module) if name in MODULES and name != module}


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(project_imports(module)):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported) :], imported] if imported in path else path
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def part_of(module: str) -> str:
    return module.split(".")[0]


def test_every_part_has_its_place_in_the_order() -> None:
    parts = {part_of(module) for module in MODULES}
    assert parts == set(LAYERS), f"unplaced: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_part_imports_only_parts_below_it(module: str) -> None:
    below = set(LAYERS[LAYERS.index(part_of(module)) + 1 :])
    imported = {part_of(name) for name in project_imports(module)} - {part_of(module)}
    assert imported <= below, f"{module} imports {sorted(imported - below)}, not below it"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_redis_and_uvicorn_internals_have_one_home_each(module: str) -> None:
    top = module.split(".")[0]
    external = {name.split(".")[0] for name in imports_of(module)}
    if "redis" in external:
        assert top == "cluster", f"{module} imports redis"
    internals = {
        name for name in imports_of(module) if name.startswith("uvicorn.") and name != "uvicorn"
    }
    if internals:
        assert top == "server", f"{module} reaches into {sorted(internals)}"


# The upstream providers' own parts: only wiring.py, which chooses the provider, imports
# them; every other part sees market_data/upstream.py and market_data/provider.py.
PROVIDER_PARTS = frozenset({"finnhub_feed", "finnhub"})


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_wiring_reaches_a_provider(module: str) -> None:
    if part_of(module) in PROVIDER_PARTS | {"wiring"}:
        return
    reached = {part_of(name) for name in project_imports(module)} & PROVIDER_PARTS
    assert not reached, f"{module} imports the provider's {sorted(reached)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("simulator")))
def test_the_simulator_never_imports_the_gateway(module: str) -> None:
    outside = {
        name
        for name in project_imports(module)
        if not name.startswith("simulator") and not name.startswith("market_data.model")
    }
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_logger_hangs_under_the_root(module: str) -> None:
    """`get_logger(__name__)` (or the root itself), so LOG_LEVEL reaches every line:
    once, `access/tokens.py`'s JWKS lines were missed for want of a list entry."""
    if module.startswith("simulator"):
        return  # a stand-in Finnhub: its own logger, "simulator"
    source = MODULES[module].read_text(encoding="utf-8")
    assert "getLogger(__name__)" not in source, f"{module} logs outside the root"


def test_log_level_reaches_every_module_logger() -> None:
    levelled = [logging.getLogger(name) for name in LEVELLED_LOGGERS]
    before = [logger.level for logger in levelled]
    try:
        configure_logging("DEBUG")
        assert logging.getLogger("gateway.access.tokens").isEnabledFor(logging.DEBUG)
        configure_logging("WARNING")
        assert not logging.getLogger("gateway.access.tokens").isEnabledFor(logging.INFO)
        assert logging.getLogger("gateway.cluster.redis_relay").isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(levelled, before, strict=True):
            logger.setLevel(level)


def test_no_test_module_imports_another() -> None:
    """Shared helpers and fixtures live in conftest.py and helper modules (tests/*.py not
    named test_*), never in a test module another one imports: a test module is read
    and run on its own."""
    tests = PROJECT / "tests"
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                named = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            else:
                continue
            for name in named:
                if name.startswith("tests.") and name.split(".")[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(PROJECT)}: {name}")
    assert not offenders, offenders


# Folders of tests beside the package's own parts (its subpackages): the browser client
# (stock_gateway/static/, package data), the spine, the package's top-level modules,
# and the suites that span every part.
TEST_FOLDERS_BESIDE_PACKAGES = {
    "static",
    "spine",
    "protocol",
    "settings",
    "abuse",
    "bench",
    "project",
}


def test_tests_are_laid_out_like_the_code() -> None:
    """Every test module lives in a folder named for the part of the gateway it tests (a
    subpackage of stock_gateway/, or one of the few folders beside them), so a
    package's tests are found in one place."""
    tests = PROJECT / "tests"
    packages = {path.parent.name for path in (PROJECT / "stock_gateway").glob("*/__init__.py")}
    allowed = packages | TEST_FOLDERS_BESIDE_PACKAGES
    misplaced = [
        str(path.relative_to(tests))
        for path in sorted(tests.rglob("test_*.py"))
        if path.parent.parent != tests or path.parent.name not in allowed
    ]
    assert not misplaced, f"test modules outside tests/<part>/: {misplaced}"
