"""The reconciler's "needs a human" cases are discrepancies, opened in the same transaction as the
row's state, and `status` / veza_needs_human count each case once; the upgrade opens them for the
cases already waiting."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import fake_hyperswitch
from tests.factories import assert_audit_ok, order_status, stuck_order
from tests.fake_hyperswitch import FakeHyperswitch, settle_payment
from tests.support import migrated_before, row, rows, run_cli
from veza_worker import db, hyperswitch, ops, reconcile
from veza_worker.settings import Settings

SETTLE_MIGRATION = "0016_settle.sql"


def ticks(n: int, conn: psycopg.Connection[Any], client: hyperswitch.Client, settings: Settings) -> None:
    """n reconciler ticks, each a cool-down after the one before."""
    for _ in range(n):
        reconcile.tick(conn, client, settings)
        conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")


def open_discrepancies(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return rows(
        conn, "SELECT kind, order_id, subject FROM discrepancies WHERE resolved_at IS NULL ORDER BY id"
    )


def counted_once(conn: psycopg.Connection[Any], settings: Settings) -> list[dict[str, Any]]:
    """What `status` lists as needing a human, after checking the gauge counts the same."""
    document, healthy = ops.status(conn, settings)
    assert not healthy
    assert ops.gauges(conn, settings)["needs_human"] == len(document["needs_a_human"])
    return list(document["needs_a_human"])


def test_the_psps_answer_that_cannot_be_applied_opens_one_discrepancy_not_an_error_row_too(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "succeeded")
    fake_hyperswitch.change_amount(fake, payment_id, 999)  # the order is 1000: never applied

    ticks(3, conn, client, psp_settings)

    assert order_status(conn, order_id) == "pending"
    [failed] = rows(conn, "SELECT processing_result FROM hyperswitch_webhook_log")
    assert failed["processing_result"] == "error: amount mismatch"
    assert open_discrepancies(conn) == [
        {"kind": "synthetic_delivery_failed", "order_id": None, "subject": payment_id}
    ]
    [human] = counted_once(conn, psp_settings)
    assert human["why"].startswith("synthetic_delivery_failed: ") and "error: amount mismatch" in human["why"]
    assert_audit_ok(conn)


def test_a_row_still_pending_after_five_answers_opens_one_discrepancy_closed_when_it_settles(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "processing")

    ticks(reconcile.NEEDS_A_HUMAN_AFTER + 2, conn, client, psp_settings)

    assert open_discrepancies(conn) == [
        {"kind": "reconcile_still_pending", "order_id": order_id, "subject": payment_id}
    ]
    [human] = counted_once(conn, psp_settings)
    assert "still processing" in human["why"]

    settle_payment(fake, payment_id, "succeeded")
    reconcile.tick(conn, client, psp_settings)

    assert order_status(conn, order_id) == "completed"
    assert open_discrepancies(conn) == []
    closed = row(conn, "SELECT resolved_by, resolution FROM discrepancies")
    assert closed["resolved_by"] == "veza-worker" and "succeeded" in closed["resolution"]
    assert ops.gauges(conn, psp_settings)["needs_human"] == 0
    assert_audit_ok(conn)


def test_status_counts_a_manual_reconcile_case_once(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    """`veza-worker reconcile` by hand leaves the same rows as the clock's: F3's log lines are rows."""
    stuck_order(conn, client, fake, "processing")
    for _ in range(reconcile.NEEDS_A_HUMAN_AFTER):
        assert run_cli("reconcile", settings=psp_settings).returncode == 0
        conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")

    status = run_cli("status", settings=psp_settings)

    assert status.returncode == 1
    [human] = json.loads(status.stdout)["needs_a_human"]
    assert human["kind"] == "discrepancy"


# -- the upgrade -------------------------------------------------------------------------------------


@pytest.fixture
def before_settle_url(tmp_path: Path) -> Iterator[str]:
    """A database migrated up to just before this round's settle migration."""
    with migrated_before(SETTLE_MIGRATION, tmp_path) as url:
        yield url


def test_the_upgrade_opens_a_discrepancy_for_every_case_already_waiting(before_settle_url: str) -> None:
    gave_up, stuck, answered = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(before_settle_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO reconcile_state (kind, row_id, failures, gave_up_at) VALUES ('order', %s, 3, now())",
            [gave_up],
        )
        conn.execute(
            "INSERT INTO reconcile_state (kind, row_id, checks, last_psp_status)"
            " VALUES ('payout', %s, 7, 'pending')",
            [stuck],
        )
        conn.execute(  # its synthetic delivery ended in error: the log row is the case
            "INSERT INTO reconcile_state (kind, row_id, checks, gave_up_at) VALUES ('refund', %s, 1, now())",
            [answered],
        )
        body = {
            "event_type": "refund_succeeded",
            "content": {"object": {"refund_id": "ref_x", "payment_id": "pay_y"}},
        }
        conn.execute(
            "INSERT INTO hyperswitch_webhook_log (payload, signature_valid, processing_result, user_agent,"
            " request_id, event_type)"
            " VALUES (%s, true, 'error: boom', 'veza-worker-reconciler', 'r', 'refund_succeeded')",
            [json.dumps(body)],
        )
        before = conn.execute("SELECT count(*) FROM discrepancies").fetchone()

    db.migrate(before_settle_url)

    with psycopg.connect(before_settle_url, autocommit=True) as conn:
        found = rows(
            conn,
            "SELECT kind, order_id, payout_id, subject FROM discrepancies"
            " WHERE resolved_at IS NULL ORDER BY kind",
        )
        settings = Settings(database_url=before_settle_url)
        assert ops.gauges(conn, settings)["needs_human"] == 3
    assert before == (0,)
    assert found == [
        {"kind": "reconcile_gave_up", "order_id": gave_up, "payout_id": None, "subject": ""},
        {"kind": "reconcile_still_pending", "order_id": None, "payout_id": stuck, "subject": ""},
        {"kind": "synthetic_delivery_failed", "order_id": None, "payout_id": None, "subject": "ref_x"},
    ]
