"""Configuration at start-up: each process refuses a bad variable with one line naming it (the
parsing itself: tests/unit/test_settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_the_cli_fails_at_start_up_with_one_line_naming_the_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veza_worker.cli", "cleanup"],
        env={**os.environ, "RECONCILE_INTERVAL": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    expected = "expected a positive duration like 90s, 5m, 1h or 2d, got 'soon'"
    assert done.stderr.splitlines() == [f"veza-worker cleanup: RECONCILE_INTERVAL: {expected}"]


@pytest.mark.parametrize(
    "command",
    [
        ["dramatiq", "veza_worker.actors", "--processes", "1", "--threads", "1"],
        ["uvicorn", "receiver.app:app", "--port", "0"],
    ],
    ids=["worker", "web"],
)
def test_the_worker_and_web_processes_refuse_to_start_on_a_bad_variable(command: list[str]) -> None:
    executable = str(Path(sys.executable).parent / command[0])
    done = subprocess.run(
        [executable, *command[1:]],
        env={**os.environ, "RECONCILE_BATCH_SIZE": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ConfigError: RECONCILE_BATCH_SIZE must be a positive integer, got 'lots'" in done.stderr
