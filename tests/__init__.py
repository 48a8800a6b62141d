"""The test suite. Its helper modules (tests/*.py not named test_*) assert too: pytest
rewrites their asserts as it does a test module's, so a failure shows its values."""

from pathlib import Path

import pytest

pytest.register_assert_rewrite(
    *(
        f"tests.{path.stem}"
        for path in sorted(Path(__file__).parent.glob("*.py"))
        if not path.stem.startswith(("test_", "__", "conftest"))
    )
)
