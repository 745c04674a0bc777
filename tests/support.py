"""Helpers shared by the tests: constants, a threaded uvicorn, signed posts, row reads."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import dramatiq
import httpx
import psycopg
import uvicorn
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.fake_hyperswitch import webhook_body
from veza_worker import actors, events, webhooks
from veza_worker.settings import Settings

TEST_REDIS_URL = os.environ["REDIS_URL"]  # set by tests/__init__.py
SAMPLES = Path(__file__).resolve().parent / "hyperswitch" / "samples"  # copied from shared/hyperswitch
VECTOR = json.loads((SAMPLES / "signature_vector.json").read_text())
SECRET = VECTOR["payment_response_hash_key"]
OLD_SECRET = "hsk_retiring_0000000000000000000000000000000000000000000000"
PSP_API_KEY = "snd_test_api_key_0123456789"  # what the fake Hyperswitch of the `psp` fixture expects
SERVER_URL = os.environ.get("VEZA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin(query: str, *names: str) -> None:
    """Run a CREATE/DROP DATABASE on the server, names quoted as identifiers."""
    statement = sql.SQL(query).format(*map(sql.Identifier, names))
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(statement)


def url_for(name: str) -> str:
    return make_conninfo(SERVER_URL, dbname=name)


@contextlib.contextmanager
def migrated_before(migration: str, tmp_path: Path) -> Iterator[str]:
    """A throwaway database migrated up to just before `migration` (to upgrade one with old rows)."""
    from veza_worker import db

    name = f"veza_pre_{uuid.uuid4().hex[:12]}"
    before = tmp_path / "before"
    before.mkdir()
    for _version, path in db.migration_files(db.migrations_dir()):
        if path.name < migration:
            shutil.copy(path, before / path.name)
    db.migrate(url_for(name), before)
    try:
        yield url_for(name)
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def join(broker: dramatiq.Broker, timeout_ms: int = 20_000) -> None:
    """Wait until every webhook message, delayed retries included, has been processed."""
    broker.join(actors.process_webhook.queue_name, timeout=timeout_ms)


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a thread."""

    def __init__(self, app: Any, **config_options: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="info", lifespan="on", **config_options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def post_webhook(
    base_url: str, body: bytes, *, secret: str | None = SECRET, **headers: str
) -> httpx.Response:
    """POST a body signed with `secret` (unsigned when None), as Hyperswitch does."""
    all_headers = {"content-type": "application/json", **headers}
    if secret is not None:
        all_headers.setdefault("x-webhook-signature-512", events.sign(body, secret))
    return httpx.post(f"{base_url}/webhooks/hyperswitch", content=body, headers=all_headers, timeout=30)


def log_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM hyperswitch_webhook_log ORDER BY id").fetchall()


def envelope(event_type: str = "payment_processing", event_id: str | None = None, **obj: Any) -> bytes:
    """A Hyperswitch-shaped body with a fresh event_id unless given."""
    document = {
        "merchant_id": "merchant_1751234567",
        "event_id": event_id or f"evt_{uuid.uuid4().hex}",
        "event_type": event_type,
        "content": {
            "type": "payment_details",
            "object": {"payment_id": "pay_x", "status": "processing", **obj},
        },
        "timestamp": "2026-03-14T10:21:07.442Z",
    }
    return json.dumps(document).encode()


def make_order(
    conn: psycopg.Connection[Any],
    items: list[tuple[uuid.UUID, int]],
    *,
    buyer_id: uuid.UUID | None = None,
    currency: str = "USD",
    status: str = "pending",
    payment_id: str | None = None,
    completed_days_ago: float | None = None,
) -> uuid.UUID:
    """An order as the host app inserts it (Contract columns only), with one item per (seller, amount)."""
    order_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO orders (id, buyer_id, status, total_amount, currency, payment_id)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        [order_id, buyer_id or uuid.uuid4(), status, sum(a for _, a in items), currency, payment_id],
    )
    for seller_id, amount in items:
        conn.execute(
            "INSERT INTO order_items (order_id, track_id, seller_id, amount) VALUES (%s, %s, %s, %s)",
            [order_id, uuid.uuid4(), seller_id, amount],
        )
    if completed_days_ago is not None:
        conn.execute(
            "UPDATE orders SET completed_at = now() - make_interval(secs => %s * 86400) WHERE id = %s",
            [completed_days_ago, order_id],
        )
    return order_id


def row(conn: psycopg.Connection[Any], query: str, *params: Any) -> dict[str, Any]:
    """The one row a query returns, as a dict."""
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(query, params).fetchall()
    assert len(found) == 1, found
    return found[0]


def rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def store(conn: psycopg.Connection[Any], body: bytes | None = None, *, signed: bool = True) -> int:
    """The row the receiver writes for a delivery (signed with SECRET unless not), without enqueuing it."""
    body = body if body is not None else envelope()
    headers = {events.SIGNATURE_HEADER: events.sign(body, SECRET if signed else "not-the-secret")}
    return webhooks.insert_log_sync(conn, webhooks.delivery(body, headers, "127.0.0.1", (SECRET,)))


def store_event(conn: psycopg.Connection[Any], event_type: str, obj: dict[str, Any]) -> int:
    return store(conn, webhook_body(event_type, obj))


def process(settings: Settings, log_id: int, *, final_attempt: bool = True) -> str | None:
    """What a worker does with one message, on its own connection."""
    with psycopg.connect(settings.database_url) as worker_conn:
        return webhooks.process(
            worker_conn, log_id, settings, final_attempt=final_attempt, retry_within=actors.RETRY_WITHIN
        )


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def make_pending_refund(
    conn: psycopg.Connection[Any], order_id: uuid.UUID, hyperswitch_refund_id: str | None = None
) -> uuid.UUID:
    """What phase 1 leaves: a pending refund of the whole order, and the order `refund_pending`."""
    refund_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO refunds (id, order_id, requested_by, amount, currency, hyperswitch_refund_id)"
        " SELECT %s, id, buyer_id, total_amount, currency, %s FROM orders WHERE id = %s",
        [refund_id, hyperswitch_refund_id or f"ref_{refund_id.hex[:26]}", order_id],
    )
    conn.execute("UPDATE orders SET status = 'refund_pending' WHERE id = %s", [order_id])
    return refund_id


def run_cli(*args: str, settings: Settings | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`veza-worker ARGS` in a child process, configured from `settings` plus `env`."""
    configured = dict(os.environ)
    if settings is not None:
        configured["DATABASE_URL"] = settings.database_url
        if settings.hyperswitch_enabled:
            configured["HYPERSWITCH_ENABLED"] = "true"
            configured["HYPERSWITCH_URL"] = str(settings.hyperswitch_url)
            configured["HYPERSWITCH_API_KEY"] = str(settings.hyperswitch_api_key)
    configured.update(env)
    command = [sys.executable, "-m", "veza_worker.cli", *args]
    return subprocess.run(command, env=configured, capture_output=True, text=True, timeout=60)


def clock_until(database_url: str, line: str) -> str:
    """`veza-worker clock` in a child process until it logs a line containing `line`, then SIGTERM:
    it must exit 0. What it logged after that line."""
    env = {**os.environ, "DATABASE_URL": database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "veza_worker.cli", "clock"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    started = time.monotonic()
    while line not in process.stderr.readline():
        assert time.monotonic() - started < 20 and process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    rest = process.stderr.read()
    process.stderr.close()
    return rest


def at_once(*calls: Callable[[], None]) -> None:
    """Run the calls in threads started together, and wait for all of them."""
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- the ops console --------------------------------------------------------------------------------

OPS_USER, OPS_PASSWORD = "alice", "correct horse battery staple"
OPS_OTHER_USER, OPS_OTHER_PASSWORD = "bob", "another long passphrase"
OPS_SECRET_KEY = "console-test-secret-key-0123456789abcdef"
_ops_hashes: dict[str, str] = {}


def ops_settings(settings: Settings) -> Settings:
    """`settings` with the console on: two users (argon2 hashes made once per session)."""
    if not _ops_hashes:
        hasher = argon2.PasswordHasher()
        _ops_hashes.update(
            {OPS_USER: hasher.hash(OPS_PASSWORD), OPS_OTHER_USER: hasher.hash(OPS_OTHER_PASSWORD)}
        )
    return dataclasses.replace(settings, ops_users=tuple(_ops_hashes.items()), ops_secret_key=OPS_SECRET_KEY)


def csrf_token_in(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "no csrf_token field in the page"
    return found.group(1)
