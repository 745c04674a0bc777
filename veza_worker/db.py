"""Postgres: connections, the named-query loader and the migration runner."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, LiteralString, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
Row = TypeVar("Row")

_HEADER = re.compile(r"^-- (\w+) --\n(?:--.*\n)*", re.MULTILINE)  # name line + description lines
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant will do: it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 7_412_839_001


def parse_queries(text: str) -> dict[str, LiteralString]:
    """Split a .sql file of `-- name --` blocks into {name: statement}."""
    _preamble, *parts = _HEADER.split(text)
    # The .sql files are ours, so we vouch for each query as a literal string.
    return {n: cast(LiteralString, q.strip()) for n, q in zip(parts[::2], parts[1::2], strict=True)}


def load_queries(module: str) -> dict[str, LiteralString]:
    """The queries of `<package>/<name>.sql`, for the module `<package>.<name>`: the .sql beside it."""
    package, _, name = module.rpartition(".")
    return parse_queries(resources.files(package).joinpath(f"{name}.sql").read_text("utf-8"))


def one(conn: Connection, kind: type[Row], query: LiteralString, params: Mapping[str, Any]) -> Row | None:
    """The first row a query returns, as a `kind`: a dataclass whose fields are its columns."""
    with conn.cursor(row_factory=class_row(kind)) as cur:
        return cur.execute(query, params).fetchone()


def is_transient(exc: BaseException) -> bool:
    """A database error a retry can cure: connection lost, pool exhausted, lock or statement
    timeout, deadlock, serialization failure, resources, or a prepared statement a migration made
    stale (prepare_if_direct; the rollback drops the connection's prepared statements, so the
    retry prepares afresh). A value too large for an index (ProgramLimitExceeded) fails the same
    way every time."""
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return False
    if isinstance(exc, psycopg.errors.InvalidSqlStatementName):  # "prepared statement … does not exist"
        return True
    if isinstance(exc, psycopg.errors.FeatureNotSupported) and "cached plan must not change" in str(exc):
        return True
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


# Server-side prepared statements: a statement psycopg has run PREPARE_THRESHOLD times on a
# connection is prepared there, so Postgres no longer parses and plans it at every call (a
# completion's statements spent ~0.6 ms planning each time, pg_stat_statements; docs/benchmarks.md,
# "The ledger on the hot path"). Safe only on a connection to Postgres itself: behind a pooler in
# transaction pooling (PgBouncer 1.18, Debian 12) a statement prepared on one server connection is
# unknown on the next. So every connection starts with them off (NEVER_PREPARE), and the worker's
# pool turns them on for the connections that reach Postgres directly (prepare_if_direct).
NEVER_PREPARE = None
PREPARE_THRESHOLD = 5  # psycopg's default


def reaches_postgres_directly(conn: Connection) -> bool:
    """Whether no pooler stands between us and the server. A pooler answers a client's startup
    with a cancel key of its own (it must route a cancel to whichever server runs the query, and
    PgBouncer draws a random one); Postgres answers with its backend's process id. Only a direct
    connection sees that id again from pg_backend_pid()."""
    with conn.transaction():  # its own: a pool's configure hook must leave the connection idle
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is not None and row[0] == conn.info.backend_pid


def prepare_if_direct(conn: Connection) -> None:
    """A pool's `configure` hook: prepared statements on a direct connection, never through a
    pooler (in session pooling too: nothing tells the modes apart from here)."""
    conn.prepare_threshold = PREPARE_THRESHOLD if reaches_postgres_directly(conn) else NEVER_PREPARE


def connect(database_url: str, *, autocommit: bool = False) -> Connection:
    return psycopg.connect(
        database_url, autocommit=autocommit, connect_timeout=5, prepare_threshold=NEVER_PREPARE
    )


# A worker's statements fail instead of hanging: a handler stuck behind a lock raises like any
# other failure (retried, then `error: ...`) long before Dramatiq's 10-minute time limit would
# kill its thread mid-transaction. 30 s outlasts a reconcile tick's PSP call made under a row lock.
WORKER_SESSION = "-c lock_timeout=30s -c statement_timeout=60s"


def make_pool(database_url: str, *, max_size: int) -> ConnectionPool[Connection]:
    """A pool for a worker process; a dead database fails a checkout within 5 s. Its connections
    prepare their statements when they reach Postgres directly (prepare_if_direct)."""
    return ConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=5,
        kwargs={"connect_timeout": 5, "options": WORKER_SESSION, "prepare_threshold": NEVER_PREPARE},
        configure=prepare_if_direct,
        open=True,
    )


# -- migrations ---------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """`migrations/` of the source tree, or its copy inside an installed wheel."""
    packaged = Path(str(resources.files("veza_worker"))) / "_migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "migrations"


def migration_files(directory: Path) -> list[tuple[str, Path]]:
    """(version, path) of every `NNNN_name.sql`, in order; a stray file name is an error."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} does not match NNNN_name.sql")
        found.append((match.group(1), path))
    return found


def migrate(database_url: str, directory: Path | None = None) -> dict[str, Any]:
    """Create the database if needed, then apply pending migrations, each in its own transaction.

    Each transaction takes a transaction-scoped advisory lock and checks again that its version is
    pending: concurrent runs take turns, even through PgBouncer in transaction pooling (where a
    session lock could be taken on one server connection and released on another).
    """
    create_database(database_url)
    files = migration_files(directory or migrations_dir())
    applied = []
    with connect(database_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for version, path in files:
            if _apply(conn, version, path):
                applied.append(path.name)
    return {"applied": applied, "already_applied": len(files) - len(applied)}


def _apply(conn: Connection, version: str, path: Path) -> bool:
    """Apply one migration unless another run already did; True when this call applied it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", [version]).fetchone():
            return False
        log.info("applying migration %s", path.name)
        conn.execute(path.read_text("utf-8"))  # our own file, trusted like a literal
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", [version, path.name])
    return True


def create_database(database_url: str) -> bool:
    """CREATE DATABASE named by the URL unless it exists; True when this call created it."""
    params = conninfo_to_dict(database_url)
    name = str(params.get("dbname") or params.get("user") or "postgres")
    admin_url = make_conninfo(database_url, dbname="postgres")
    with connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False  # a concurrent migrate created it first
    log.info("created database %s", name)
    return True
