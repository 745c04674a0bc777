"""The test suite's own layout: no test imports another test module, and unit tests need no service."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by its absolute dotted name (`from tests import x` gives tests.x)."""
    package = ".".join(path.relative_to(TESTS.parent).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def is_test_module(name: str) -> bool:
    """tests.test_x, tests.unit.test_x, and conftest, which pytest loads and no one should import."""
    parts = name.split(".")
    return parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest")


def test_no_test_imports_another_test_module() -> None:
    reaching = {
        str(path.relative_to(TESTS.parent)): sorted(filter(is_test_module, imported_modules(path)))
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: names for path, names in reaching.items() if names} == {}, (
        "shared helpers live in tests/factories.py (rows), tests/support.py (the rest) "
        "or, as fixtures, in tests/conftest.py"
    )


def test_the_unit_tests_pass_with_postgres_and_redis_unreachable() -> None:
    nothing_listens = {
        "VEZA_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:9/postgres?connect_timeout=1",
        "VEZA_TEST_REDIS_URL": "redis://127.0.0.1:9/15",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "unit")],
        env={**os.environ, **nothing_listens},
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
