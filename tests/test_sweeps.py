"""Redrive, replay and retention: functions and the CLI that runs them, on real Postgres and Redis."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.support import at_once, envelope, join, log_rows, make_order, rows, run_cli, store
from veza_worker import retention, webhooks


def age(conn: psycopg.Connection[Any], log_id: int, interval: str) -> None:
    conn.execute(
        "UPDATE hyperswitch_webhook_log SET received_at = now() - %s::interval WHERE id = %s",
        [interval, log_id],
    )


def set_result(conn: psycopg.Connection[Any], log_id: int, result: str) -> None:
    conn.execute("UPDATE hyperswitch_webhook_log SET processing_result = %s WHERE id = %s", [result, log_id])


# -- redrive --------------------------------------------------------------------------------------


def test_redrive_sends_only_rows_queued_for_over_two_minutes(conn: psycopg.Connection[Any]) -> None:
    stuck, young, done, unsigned, retrying = (store(conn) for _ in range(5))
    for log_id in (stuck, done, retrying):
        age(conn, log_id, "3 minutes")
    age(conn, unsigned, "3 minutes")
    set_result(conn, done, "ok")
    set_result(conn, unsigned, "signature_invalid")
    conn.execute(
        "UPDATE hyperswitch_webhook_log SET redrive_after = now() + interval '1 minute' WHERE id = %s",
        [retrying],
    )
    sent: list[int] = []

    assert webhooks.redrive(conn, sent.append) == {"redriven": 1}
    assert sent == [stuck]
    assert webhooks.redrive(conn, sent.append) == {"redriven": 0}  # claimed: not sent twice
    assert young not in sent


def test_two_redrives_at_once_send_each_row_once(database_url: str, conn: psycopg.Connection[Any]) -> None:
    ids = [store(conn) for _ in range(200)]
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '5 minutes'")
    sent: list[int] = []
    lock = threading.Lock()

    def enqueue(log_id: int) -> None:
        with lock:
            sent.append(log_id)

    def run() -> None:
        with psycopg.connect(database_url) as own:
            webhooks.redrive(own, enqueue, limit=20)

    at_once(*[run] * 12)

    assert len(sent) == len(set(sent)) == 200
    assert sorted(sent) == ids


def test_the_redrive_command_delivers_a_lost_message_through_the_worker(
    database_url: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    log_id = store(conn, envelope("payment_processing"))
    age(conn, log_id, "10 minutes")

    done = run_cli("redrive", DATABASE_URL=database_url)
    join(broker)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"redriven": 1}
    assert log_rows(conn)[0]["processing_result"] == "skipped: informational"


# -- replay ---------------------------------------------------------------------------------------


def test_replay_enqueues_queued_rows_keeps_processed_ones_and_refuses_unsigned(
    conn: psycopg.Connection[Any],
) -> None:
    queued, processed, unsigned = store(conn), store(conn), store(conn, signed=False)
    set_result(conn, processed, "ok")
    sent: list[int] = []

    outcome = webhooks.replay(conn, [queued, processed, unsigned], sent.append, force=False)

    assert outcome == {
        "enqueued": 1,
        "unchanged": 1,
        "refused": 1,
        "rows": {str(queued): "enqueued", str(processed): "unchanged", str(unsigned): "refused"},
    }
    assert sent == [queued]
    assert [r["processing_result"] for r in log_rows(conn)] == ["queued", "ok", "signature_invalid"]


def test_replay_force_puts_a_processed_row_back_in_the_outbox(conn: psycopg.Connection[Any]) -> None:
    log_id = store(conn)
    set_result(conn, log_id, "error: RuntimeError: ledger unavailable")
    sent: list[int] = []

    outcome = webhooks.replay(conn, [log_id], sent.append, force=True)

    assert outcome["enqueued"] == 1 and sent == [log_id]
    assert log_rows(conn)[0]["processing_result"] == "queued"


def test_replay_of_an_unknown_id_exits_1_and_enqueues_nothing(
    database_url: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    known = store(conn)

    done = run_cli("replay", str(known), "999999", DATABASE_URL=database_url)

    assert done.returncode == 1
    assert done.stderr.strip() == "veza-worker replay: webhook log rows not found: 999999"
    assert done.stdout == ""
    assert broker.do_qsize("webhooks") == 0  # type: ignore[attr-defined]


def test_replay_of_a_processed_event_is_a_no_op_through_the_worker_unless_forced(
    database_url: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    log_id = store(conn, envelope("payment_processing"))
    assert run_cli("replay", str(log_id), DATABASE_URL=database_url).returncode == 0
    join(broker)
    first = log_rows(conn)[0]

    again = run_cli("replay", str(log_id), DATABASE_URL=database_url)
    join(broker)
    assert json.loads(again.stdout)["unchanged"] == 1
    assert log_rows(conn)[0]["processed_at"] == first["processed_at"]

    forced = run_cli("replay", "--force", str(log_id), DATABASE_URL=database_url)
    join(broker)
    assert json.loads(forced.stdout)["enqueued"] == 1
    row = log_rows(conn)[0]
    assert row["processing_result"] == first["processing_result"]
    assert row["processed_at"] > first["processed_at"]


def test_replay_without_ids_is_a_usage_error(database_url: str) -> None:
    assert run_cli("replay", DATABASE_URL=database_url).returncode == 2


# -- retention ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "kept"),
    [
        ("ok", False),
        ("skipped: duplicate event", False),
        ("signature_invalid", False),
        ("queued", True),
        ("error: invalid json", True),
    ],
)
def test_retention_keeps_queued_and_error_rows_whatever_their_age(
    conn: psycopg.Connection[Any], result: str, kept: bool
) -> None:
    old, young = store(conn), store(conn)
    set_result(conn, old, result)
    set_result(conn, young, result)
    age(conn, old, "91 days")
    age(conn, young, "89 days")

    retention.cleanup(conn, timedelta(days=90))

    remaining = [r["id"] for r in log_rows(conn)]
    assert remaining == ([old, young] if kept else [young])


def test_retention_deletes_in_batches(conn: psycopg.Connection[Any]) -> None:
    ids = [store(conn) for _ in range(25)]
    for log_id in ids[1:]:
        set_result(conn, log_id, "ok")
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '100 days'")

    outcome = retention.cleanup(conn, timedelta(days=90), batch_size=10, pause=0)

    assert outcome == {"deleted": 24, "batches": 3, "reconcile_state_pruned": 0}
    assert [r["id"] for r in log_rows(conn)] == [ids[0]]


def test_the_cleanup_command_reads_the_retention_days(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    old, recent = store(conn), store(conn)
    conn.execute("UPDATE hyperswitch_webhook_log SET processing_result = 'ok'")
    age(conn, old, "8 days")
    age(conn, recent, "6 days")

    env_run = run_cli("cleanup", DATABASE_URL=database_url, HYPERSWITCH_WEBHOOK_LOG_RETENTION_DAYS="7")

    assert env_run.returncode == 0, env_run.stderr
    assert json.loads(env_run.stdout) == {"deleted": 1, "batches": 1, "reconcile_state_pruned": 0}
    assert [r["id"] for r in log_rows(conn)] == [recent]


def test_cleanup_prunes_what_the_reconciler_remembers_of_rows_no_longer_open(
    conn: psycopg.Connection[Any],
) -> None:
    open_order = make_order(conn, [(uuid.uuid4(), 100)], payment_id="pay_open")
    settled_order = make_order(conn, [(uuid.uuid4(), 100)], status="completed", payment_id="pay_done")
    gave_up = make_order(conn, [(uuid.uuid4(), 100)], status="completed", payment_id="pay_human")
    for order_id in (open_order, settled_order):
        conn.execute("INSERT INTO reconcile_state (kind, row_id) VALUES ('order', %s)", [order_id])
    conn.execute(
        "INSERT INTO reconcile_state (kind, row_id, gave_up_at) VALUES ('order', %s, now())", [gave_up]
    )
    conn.execute("INSERT INTO reconcile_state (kind, row_id) VALUES ('invoice', %s)", [uuid.uuid4()])

    assert retention.cleanup(conn, timedelta(days=90))["reconcile_state_pruned"] == 2

    remaining = {r["row_id"] for r in rows(conn, "SELECT row_id FROM reconcile_state")}
    assert remaining == {open_order, gave_up}
