"""Unit tests: pure functions, with no Postgres, no Redis and no fixture of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_session_per_redis_db() -> Iterator[None]:
    """Replaces tests/conftest.py's turn on the shared Redis database: nothing here touches it, so
    `pytest tests/unit` runs at once, even while another session holds the turn."""
    yield
