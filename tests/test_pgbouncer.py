"""Past one machine: the receiver, a worker and the migration runner through a real PgBouncer in
transaction pooling mode, where a session-scoped lock or a server-side prepared statement breaks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from receiver.app import create_app
from tests.fake_hyperswitch import webhook_body
from tests.support import ServerThread, admin, at_once, join, log_rows, make_order, post_webhook, rows
from veza_worker import db, hyperswitch
from veza_worker.settings import Settings

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
pytestmark = pytest.mark.skipif(
    not os.path.exists(PGBOUNCER),
    reason="pgbouncer is not installed (make test installs it: apt-get install pgbouncer)",
)


@pytest.fixture
def pgbouncer() -> Iterator[int]:
    """PgBouncer on a free port, transaction pooling, every database of the local server. It runs
    as the postgres user (it refuses root), so its files live where that user can write."""
    tmp_path = Path(tempfile.mkdtemp(prefix="veza-pgbouncer-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    (tmp_path / "users.txt").write_text('"postgres" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp_path / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        # Startup options PgBouncer cannot track per transaction: ignored (see the README).
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {tmp_path / 'pgbouncer.log'}\npidfile = {tmp_path / 'pgbouncer.pid'}\n"
    )
    os.chmod(tmp_path, 0o777)
    for path in tmp_path.iterdir():
        os.chmod(path, 0o666)
    process = subprocess.Popen([PGBOUNCER, "-u", "postgres", str(tmp_path / "pgbouncer.ini")])
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "pgbouncer did not start"
            time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(10)
    shutil.rmtree(tmp_path, ignore_errors=True)


def through(database_url: str, port: int) -> str:
    return make_conninfo(database_url, host="127.0.0.1", port=str(port))


def test_migrate_runs_through_pgbouncer_twice_at_once(pgbouncer: int, template_db: str) -> None:
    name = f"veza_pgb_{uuid.uuid4().hex[:10]}"
    url = make_conninfo("postgresql://postgres@127.0.0.1/postgres", dbname=name, port=str(pgbouncer))
    migrations = len(db.migration_files(db.migrations_dir()))
    outcomes: list[dict[str, Any]] = []

    at_once(lambda: outcomes.append(db.migrate(url)), lambda: outcomes.append(db.migrate(url)))

    assert sum(len(o["applied"]) for o in outcomes) == migrations  # each applied once, by one of them
    with psycopg.connect(make_conninfo(url, port="5432")) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (migrations,)
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    admin("DROP DATABASE {} WITH (FORCE)", name)


def test_the_receiver_and_a_worker_through_pgbouncer(
    pgbouncer: int,
    database_url: str,
    conn: psycopg.Connection[Any],
    settings: Settings,
    broker: dramatiq.Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pooled = through(database_url, pgbouncer)
    monkeypatch.setenv("DATABASE_URL", pooled)  # what the worker's pool connects to
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        payments = []
        for _ in range(30):  # more than psycopg's default prepare threshold (5) per connection
            payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
            make_order(conn, [(uuid.uuid4(), 700), (uuid.uuid4(), 300)], payment_id=payment_id)
            payments.append(payment_id)
        with ServerThread(create_app(replace(settings, database_url=pooled))) as server:
            for payment_id in payments:
                obj = {"payment_id": payment_id, "status": "succeeded", "amount": 1000, "currency": "USD"}
                assert post_webhook(server.url, webhook_body("payment_succeeded", obj)).status_code == 200
                assert post_webhook(server.url, webhook_body("payment_succeeded", obj)).status_code == 200
            join(broker)
    finally:
        worker.stop()

    results = sorted(r["processing_result"] for r in log_rows(conn))
    assert results == sorted(["ok"] * 30 + ["skipped: order already completed"] * 30)
    assert len(rows(conn, "SELECT 1 FROM orders WHERE status = 'completed'")) == 30
    assert len(rows(conn, "SELECT 1 FROM licenses")) == 60


def prepared_on(pool: Any, query: str, times: int) -> tuple[int | None, list[str]]:
    """Run `query` `times` times on one of the pool's connections; its prepare threshold and the
    statements that connection's server session holds prepared."""
    with pool.connection() as conn:
        for _ in range(times):
            conn.execute(query).fetchone()
        conn.commit()
        held = [r[0] for r in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        conn.commit()
        return conn.prepare_threshold, held


def test_the_worker_prepares_its_statements_only_when_it_reaches_postgres_directly(
    pgbouncer: int, database_url: str
) -> None:
    query = "SELECT count(*) FROM orders WHERE status = 'completed'"
    with db.make_pool(database_url, max_size=1) as direct:
        threshold, held = prepared_on(direct, query, db.PREPARE_THRESHOLD + 1)
    assert threshold == db.PREPARE_THRESHOLD
    assert query in held  # planned once for this connection, not at every call

    with db.make_pool(through(database_url, pgbouncer), max_size=1) as pooled:
        with pooled.connection() as conn:
            assert db.reaches_postgres_directly(conn) is False  # PgBouncer's own cancel key
            conn.commit()
        threshold, held = prepared_on(pooled, query, db.PREPARE_THRESHOLD + 1)
    assert threshold is None
    assert held == []  # a prepared statement would be unknown on PgBouncer's next server connection


def test_a_statement_a_migration_made_stale_is_retried_not_failed_for_good(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A release's `migrate` runs while the old workers still hold prepared statements: one that a
    migration changed under them fails once, and the retry (after the rollback) prepares afresh."""
    conn.execute("CREATE TABLE stale_probe (x integer)")
    conn.execute("INSERT INTO stale_probe VALUES (1)")
    conn.commit()
    query = "SELECT x FROM stale_probe"
    try:
        with db.make_pool(database_url, max_size=1) as pool, pool.connection() as worker_conn:
            for _ in range(db.PREPARE_THRESHOLD + 1):
                worker_conn.execute(query).fetchone()
            worker_conn.commit()
            conn.execute("ALTER TABLE stale_probe ALTER COLUMN x TYPE bigint")  # the migration
            conn.commit()
            with pytest.raises(psycopg.errors.FeatureNotSupported) as stale:
                worker_conn.execute(query)
            worker_conn.rollback()
            assert db.is_transient(stale.value)  # retried by the worker, not ended `error: ...`
            assert worker_conn.execute(query).fetchone() == (1,)
            worker_conn.commit()
    finally:
        conn.execute("DROP TABLE stale_probe")
        conn.commit()
