"""The migration runner: creates the database, applies in order, is a no-op twice, serializes racers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import admin, at_once, url_for
from veza_worker import db


@pytest.fixture
def fresh_url() -> Iterator[str]:
    name = f"veza_mig_{uuid.uuid4().hex[:12]}"
    yield url_for(name)
    admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def test_migrate_creates_the_database_and_twice_is_a_no_op(fresh_url: str) -> None:
    names = [path.name for _, path in db.migration_files(db.migrations_dir())]
    first = db.migrate(fresh_url)
    second = db.migrate(fresh_url)

    assert names[0] == "0001_schema.sql"
    assert first == {"applied": names, "already_applied": 0}
    assert second == {"applied": [], "already_applied": len(names)}
    with psycopg.connect(fresh_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [name[:4] for name in names]


def test_two_concurrent_migrations_do_not_collide(fresh_url: str) -> None:
    outcomes: list[Any] = []

    def run() -> None:
        try:
            outcomes.append(db.migrate(fresh_url))
        except Exception as exc:  # collected, so the assertion below shows it
            outcomes.append(exc)

    at_once(*[run] * 3)

    files = [path.name for _, path in db.migration_files(db.migrations_dir())]
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert sorted(name for o in outcomes for name in o["applied"]) == files  # each once, by one of them
    with psycopg.connect(fresh_url) as conn:
        in_order = conn.execute("SELECT name FROM schema_migrations ORDER BY applied_at, version").fetchall()
    assert [name for (name,) in in_order] == files  # and in order, whoever applied each


def test_a_failing_migration_rolls_back_alone_and_is_retried_next_time(
    fresh_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE b (id int); SELECT * FROM no_such_table;")

    with pytest.raises(psycopg.errors.UndefinedTable):
        db.migrate(fresh_url, tmp_path)

    with psycopg.connect(fresh_url) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [("0001",)]
        assert conn.execute("SELECT to_regclass('b')").fetchone() == (None,)
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE b (id int);")
    assert db.migrate(fresh_url, tmp_path)["applied"] == ["0002_broken.sql"]


def test_a_stray_file_name_in_migrations_is_refused(tmp_path: Path) -> None:
    (tmp_path / "add_table.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        db.migration_files(tmp_path)
