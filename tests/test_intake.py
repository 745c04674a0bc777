"""Worker intake: a signed POST → row → Redis → a real Dramatiq worker → one final processing_result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.support import at_once, envelope, join, log_rows, post_webhook, process, store
from veza_worker import actors, db, events, webhooks
from veza_worker.settings import Settings


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b"{not json", "error: invalid json"),
        (b'["a", "list"]', "error: invalid envelope: not a JSON object"),
        (b'{"content": {}}', "error: missing event_type"),
        (envelope("dispute_opened"), "error: missing dispute_id or payment_id"),
        (envelope("mandate_active"), "skipped: informational"),
        (envelope("payment_frobnicated"), "skipped: unhandled payment_frobnicated"),
        (b'{"event_type": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "error: invalid json"),
        (
            b'{"event_type": "payment_succeeded", "content": {"object": {"payment_id": 7}}}',
            "error: invalid payment_id",
        ),
        # Poison values inside the object end at once, never after 10 retries:
        (
            b'{"event_type": "payment_succeeded", "content": {"object": {"payment_id": "pay_\\udfff"}}}',
            "error: invalid payment_id",
        ),
        (
            b'{"event_type": "payment_failed", "content": {"object": {"payment_id": "pay_\\u0000x"}}}',
            "error: invalid payment_id",
        ),
        (
            b'{"event_type": "refund_failed", "content": {"object": {"refund_id": "ref_'
            + b"r" * 4096
            + b'"}}}',
            "error: invalid refund_id",
        ),
        (
            b'{"event_type": "payment_succeeded", "content": {"object": {"payment_id": ["pay_1"]}}}',
            "error: invalid payment_id",
        ),
    ],
    ids=[
        "malformed",
        "not-an-object",
        "no-event-type",
        "dispute",
        "mandate-active",
        "unknown-type",
        "too-deep",
        "payment-id-not-text",
        "payment-id-surrogate",
        "payment-id-nul",
        "refund-id-4kb",
        "payment-id-list",
    ],
)
def test_bodies_that_cannot_be_applied_end_with_a_final_result_and_no_retry(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    body: bytes,
    result: str,
) -> None:
    post_webhook(receiver, body)
    join(broker)

    [row] = log_rows(conn)
    assert row["processing_result"] == result
    assert row["attempts"] == 0  # a final answer, not a failure


@pytest.fixture
def counting_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A handler for `test_event` that records each event it applies, inside the delivery's transaction."""
    applied: list[str] = []

    def handle(conn: psycopg.Connection[Any], event: events.Event, settings: Settings) -> str:
        conn.execute("SELECT pg_sleep(0.2)")  # widen the race window
        applied.append(str(event.event_id))
        return "ok"

    monkeypatch.setitem(webhooks.HANDLERS, "test_event", handle)
    yield applied


@pytest.mark.usefixtures("worker")
def test_one_event_delivered_three_times_is_applied_once(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    counting_handler: list[str],
) -> None:
    body = envelope("test_event", "evt_once")
    for _ in range(3):
        assert post_webhook(receiver, body).status_code == 200
        join(broker)

    assert [r["processing_result"] for r in log_rows(conn)] == [
        "ok",
        "skipped: duplicate event",
        "skipped: duplicate event",
    ]
    assert counting_handler == ["evt_once"]


def test_three_copies_processed_at_the_same_time_are_applied_once(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
    counting_handler: list[str],
) -> None:
    worker.pause()  # let all three messages queue up, then release them to four threads at once
    body = envelope("test_event", "evt_race")
    for _ in range(3):
        assert post_webhook(receiver, body).status_code == 200
    worker.resume()
    join(broker)

    results = sorted(r["processing_result"] for r in log_rows(conn))
    assert results == ["ok", "skipped: duplicate event", "skipped: duplicate event"]
    assert counting_handler == ["evt_race"]


def test_the_same_message_consumed_twice_at_once_is_applied_once(
    receiver: str,
    database_url: str,
    settings: Settings,
    conn: psycopg.Connection[Any],
    counting_handler: list[str],
) -> None:
    """Redis delivers at least once: two workers may hold one message. The row lock settles it."""
    log_id = post_webhook(receiver, envelope("test_event", "evt_twice")).json()["log_id"]
    results: list[str | None] = []

    def run() -> None:
        with psycopg.connect(database_url) as worker_conn:
            results.append(
                webhooks.process(
                    worker_conn, log_id, settings, final_attempt=False, retry_within=actors.RETRY_WITHIN
                )
            )

    at_once(*[run] * 2)

    assert results == ["ok", "ok"]  # the second found the row final and changed nothing
    assert counting_handler == ["evt_twice"]
    assert log_rows(conn)[0]["processing_result"] == "ok"


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("failure", "runs", "result"),
    [
        (psycopg.errors.LockNotAvailable("lock timeout"), 3, "error: LockNotAvailable: lock timeout"),
        (psycopg.errors.DeadlockDetected("deadlock"), 3, "error: DeadlockDetected: deadlock"),
        (RuntimeError("ledger bug"), 1, "error: RuntimeError: ledger bug"),
        (psycopg.errors.CheckViolation("balance < 0"), 1, "error: CheckViolation: balance < 0"),
        (
            psycopg.errors.ProgramLimitExceeded("index row too big"),
            1,
            "error: ProgramLimitExceeded: index row too big",
        ),
    ],
    ids=["lock-timeout", "deadlock", "bug", "constraint", "program-limit"],
)
def test_a_transient_failure_is_retried_and_a_deterministic_one_ends_at_once(
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    runs: int,
    result: str,
) -> None:
    calls: list[int] = []

    def broken(conn: psycopg.Connection[Any], event: events.Event, settings: Settings) -> str:
        conn.execute(
            "INSERT INTO subscription_plans (name, amount, currency, interval)"
            " VALUES ('x', 1, 'EUR', 'month')"
        )
        calls.append(1)
        raise failure

    monkeypatch.setitem(webhooks.HANDLERS, "test_event", broken)
    row_id = store(conn, envelope("test_event"))
    actors.process_webhook.send_with_options(args=(row_id,), max_retries=2, min_backoff=10, max_backoff=50)
    join(broker)

    [row] = log_rows(conn)
    assert len(calls) == runs  # transient: the first run and two retries; deterministic: one
    assert row["processing_result"] == result
    assert row["attempts"] == runs and row["last_error"] == result.removeprefix("error: ")
    assert row["redrive_after"] is None and row["processed_at"] is not None
    # every attempt rolled back what the handler wrote
    assert conn.execute("SELECT count(*) FROM subscription_plans").fetchone() == (0,)


@pytest.mark.usefixtures("worker")
def test_a_handler_that_fails_once_succeeds_on_retry(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def flaky(conn: psycopg.Connection[Any], event: events.Event, settings: Settings) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("blip")
        return "ok"

    monkeypatch.setitem(webhooks.HANDLERS, "test_event", flaky)
    post_webhook(receiver, envelope("test_event"))
    join(broker)

    [row] = log_rows(conn)
    assert row["processing_result"] == "ok" and row["attempts"] == 1
    assert row["last_error"] == "ConnectionError: blip"


def test_a_failed_final_attempt_never_overwrites_a_result_another_worker_wrote(
    conn: psycopg.Connection[Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_id = store(conn, envelope("payment_processing"))
    conn.execute("UPDATE hyperswitch_webhook_log SET processing_result = 'ok' WHERE id = %s", [log_id])

    def database_blip(*args: Any) -> str:
        raise RuntimeError("connection lost before the row was read")

    monkeypatch.setattr(webhooks, "apply", database_blip)
    assert process(settings, log_id) == "error: RuntimeError: connection lost before the row was read"

    assert log_rows(conn)[0]["processing_result"] == "ok"


def test_worker_connections_fail_on_a_long_lock_wait_instead_of_hanging(database_url: str) -> None:
    pool = db.make_pool(database_url, max_size=1)
    try:
        with pool.connection() as conn:
            lock_timeout = conn.execute("SHOW lock_timeout").fetchone()
            statement_timeout = conn.execute("SHOW statement_timeout").fetchone()
    finally:
        pool.close()
    assert (lock_timeout, statement_timeout) == (("30s",), ("1min",))
