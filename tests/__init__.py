"""The test suite, one folder per part of the gateway it tests (tests/<package>/, the
spine's in tests/spine/, the attacks in tests/abuse/, the project's own checks in
tests/project/). Its shared helpers (tests/support/) assert too: pytest rewrites their
asserts as it does a test module's, so a failure shows its values."""

from pathlib import Path

import pytest

pytest.register_assert_rewrite(
    *(
        f"tests.support.{path.stem}"
        for path in sorted((Path(__file__).parent / "support").glob("*.py"))
        if not path.stem.startswith("__")
    )
)
