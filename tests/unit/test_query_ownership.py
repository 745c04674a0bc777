"""Only the module that owns a .sql file runs its queries; every other module calls its functions.

tests/ is left out on purpose: test_scale EXPLAINs the sweeps' claim queries themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("veza_worker", "receiver", "console", "bench")
REACH_IN = re.compile(r"\b(\w+)\.QUERIES\[")
IMPORTED = re.compile(r"^\s*from\s+\S+\s+import\s.*\bQUERIES\b")


def python_sources() -> list[Path]:
    """Every .py file under CHECKED, and bench's scripts (Python files without a suffix)."""
    found = []
    for path in sorted(p for top in CHECKED for p in (ROOT / top).rglob("*") if p.is_file()):
        if path.suffix == ".py" or (
            path.suffix == "" and path.read_text("utf-8").startswith("#!/usr/bin/env python")
        ):
            found.append(path)
    return found


def reach_ins(owner: str, text: str) -> list[str]:
    """The lines of module `owner` that run another module's QUERIES."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        foreign = [m.group(1) for m in REACH_IN.finditer(line) if m.group(1) != owner]
        if foreign or IMPORTED.match(line):
            found.append(f"{number}: {line.strip()}")
    return found


def test_the_check_finds_a_reach_in_and_lets_a_module_run_its_own() -> None:
    text = 'conn.execute(QUERIES["a"])\nconn.execute(billing.QUERIES["b"])\nfrom x.y import QUERIES\n'

    assert reach_ins("billing", text) == ["3: from x.y import QUERIES"]
    assert reach_ins("ops", text) == ['2: conn.execute(billing.QUERIES["b"])', "3: from x.y import QUERIES"]


def test_bench_scripts_are_checked_too() -> None:
    assert ROOT / "bench" / "worker" in python_sources()


def test_no_module_runs_another_modules_queries() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for path in python_sources()
        if (lines := reach_ins(path.stem, path.read_text("utf-8")))
    }

    assert found == {}, "call a function of the module that owns the .sql instead"
