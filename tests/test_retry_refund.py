"""`veza-worker retry-refund`: a failed automatic refund is tried again as a new automatic refund of
the same amount, sent like any other; the failed one stays as it was, and the books stay right."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.factories import account, assert_audit_ok, failed_automatic_refund, three_items
from tests.fake_hyperswitch import FakeHyperswitch, settle_refund
from tests.support import at_once, process, row, rows, run_cli, store_event
from veza_worker import automatic_refunds, errors, hyperswitch, ledger
from veza_worker.settings import Settings

Settle = Callable[[Any, str], None]


def refunds_of(conn: psycopg.Connection[Any], failed: dict[str, Any]) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT id, status, amount, automatic, retry_of, submitted_at FROM refunds"
        " WHERE order_id = %s OR invoice_id = %s ORDER BY created_at",
        failed["order_id"],
        failed["invoice_id"],
    )


@pytest.fixture
def failed(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> dict[str, Any]:
    """An order's automatic refund that the PSP failed: 700 USD in suspense, a discrepancy open."""
    return failed_automatic_refund(conn, settings, client, fake)


def retried(conn: psycopg.Connection[Any], refund_id: Any) -> dict[str, Any]:
    """`retry-refund`'s function, committed."""
    with conn.transaction():
        return automatic_refunds.retry(conn, uuid.UUID(str(refund_id)), by="cli")


@pytest.fixture
def settle(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> Settle:
    """What is unsent goes to the PSP, which settles this refund (`succeeded` or `failed`); its
    webhook is applied."""

    def settled(refund_id: Any, outcome: str) -> None:
        automatic_refunds.send_unsent(conn, client)
        psp_id = row(conn, "SELECT hyperswitch_refund_id FROM refunds WHERE id = %s", refund_id)
        why = "declined" if outcome == "failed" else None
        refund = settle_refund(fake, psp_id["hyperswitch_refund_id"], outcome, why)
        assert process(settings, store_event(conn, f"refund_{outcome}", dict(refund))) == "ok"

    return settled


@pytest.mark.parametrize("invoice", [False, True], ids=["order", "invoice"])
def test_retry_refund_opens_a_new_automatic_refund_that_gives_the_money_back(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    broker: dramatiq.Broker,
    settle: Settle,
    invoice: bool,
) -> None:
    failed = failed_automatic_refund(conn, settings, client, fake, invoice=invoice)
    before = row(conn, "SELECT * FROM refunds WHERE id = %s", failed["id"])
    assert account(conn, ledger.SUSPENSE) == failed["amount"]

    done = run_cli(
        "retry-refund", str(failed["id"]), "--by", "alice", "--note", "card replaced", settings=settings
    )

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["retry_of"] == str(failed["id"]) and printed["status"] == "pending"
    assert printed["amount"] == failed["amount"] and printed["currency"] == failed["currency"]
    first, retry = refunds_of(conn, failed)
    assert first == {**first, "id": failed["id"], "status": "failed", "retry_of": None}
    assert row(conn, "SELECT * FROM refunds WHERE id = %s", failed["id"]) == before  # as it was
    assert (str(retry["id"]), retry["status"], retry["automatic"]) == (printed["refund_id"], "pending", True)
    assert (retry["amount"], retry["retry_of"]) == (failed["amount"], failed["id"])
    assert int(broker.do_qsize("refunds")) == 1  # type: ignore[attr-defined]  # sent like any other
    assert account(conn, ledger.SUSPENSE) == failed["amount"]  # captured once: nothing posted again
    resolved = row(
        conn, "SELECT resolved_by, resolution FROM discrepancies WHERE refund_id = %s", failed["id"]
    )
    assert resolved["resolved_by"] == "alice" and "card replaced" in resolved["resolution"]
    assert_audit_ok(conn)

    assert automatic_refunds.send(conn, client, retry["id"]) == "sent"
    [posted] = [
        c for c in fake.calls_to("POST", "/refunds") if c.body["refund_id"] != before["hyperswitch_refund_id"]
    ]
    assert posted.body["payment_id"] == failed["payment_id"] and posted.body["amount"] == failed["amount"]
    settle(retry["id"], "succeeded")

    assert account(conn, ledger.SUSPENSE) == 0 and account(conn, ledger.WORLD) == 0
    assert_audit_ok(conn)


def test_a_retry_is_refused_while_another_is_pending_or_succeeded(
    conn: psycopg.Connection[Any], settings: Settings, failed: dict[str, Any], settle: Settle
) -> None:
    retry = retried(conn, failed["id"])

    for _ in range(2):
        with pytest.raises(errors.DomainError, match=f"automatic refund {retry['refund_id']} is pending"):
            retried(conn, failed["id"])
    settle(retry["refund_id"], "succeeded")
    again = run_cli("retry-refund", str(failed["id"]), settings=settings)

    assert again.returncode == 1 and "is succeeded: refund" in again.stderr and "not retried" in again.stderr
    assert len(refunds_of(conn, failed)) == 2
    assert_audit_ok(conn)


def test_a_failed_retry_can_be_retried_and_the_money_still_leaves_suspense_once(
    conn: psycopg.Connection[Any], failed: dict[str, Any], settle: Settle
) -> None:
    second = retried(conn, failed["id"])
    settle(second["refund_id"], "failed")
    assert row(conn, "SELECT count(*) AS n FROM discrepancies WHERE resolved_at IS NULL")["n"] == 1
    assert_audit_ok(conn)

    third = retried(conn, second["refund_id"])
    settle(third["refund_id"], "succeeded")

    assert [r["status"] for r in refunds_of(conn, failed)] == ["failed", "failed", "succeeded"]
    assert {r["retry_of"] for r in refunds_of(conn, failed)} == {None, failed["id"]}  # all name the first
    assert account(conn, ledger.SUSPENSE) == 0 and account(conn, ledger.WORLD) == 0
    assert row(conn, "SELECT count(*) AS n FROM discrepancies WHERE resolved_at IS NULL")["n"] == 0
    assert_audit_ok(conn)


def test_two_retries_at_once_open_one_refund(
    conn: psycopg.Connection[Any], settings: Settings, failed: dict[str, Any]
) -> None:
    outcomes: list[str] = []

    def retry() -> None:
        with psycopg.connect(settings.database_url, autocommit=True) as own:
            try:
                with own.transaction():
                    automatic_refunds.retry(own, failed["id"], by="cli")
                outcomes.append("retried")
            except errors.DomainError:
                outcomes.append("refused")

    at_once(retry, retry, retry)

    assert sorted(outcomes) == ["refused", "refused", "retried"]
    assert len(refunds_of(conn, failed)) == 2
    assert_audit_ok(conn)


def test_a_replayed_late_success_does_not_open_a_second_automatic_refund_beside_a_failed_one(
    conn: psycopg.Connection[Any], settings: Settings, failed: dict[str, Any]
) -> None:
    late = {"payment_id": failed["payment_id"], "status": "succeeded", "amount": 700, "currency": "USD"}

    assert (
        process(settings, store_event(conn, "payment_succeeded", late))
        == "skipped: order already refunded automatically"
    )

    assert len(refunds_of(conn, failed)) == 1
    assert account(conn, ledger.SUSPENSE) == 700
    assert_audit_ok(conn)


def test_retry_refund_refuses_anything_but_a_failed_automatic_refund(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = three_items(conn, settings, fake)
    manual = row(
        conn,
        "INSERT INTO refunds (order_id, requested_by, amount, currency, status, hyperswitch_refund_id,"
        " failed_at) SELECT id, buyer_id, 1000, 'USD', 'failed', 'ref_manual_failed_000000000000', now()"
        " FROM orders WHERE id = %s RETURNING id",
        order_id,
    )["id"]
    failed = failed_automatic_refund(conn, settings, client, fake)
    pending = retried(conn, failed["id"])["refund_id"]

    for refund_id, message in [
        (manual, "is a failed, not automatic, refund"),
        (pending, "is a pending automatic refund"),
        (uuid.uuid4(), "not found"),
    ]:
        done = run_cli("retry-refund", str(refund_id), settings=settings)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    assert run_cli("retry-refund", "not-a-uuid", settings=settings).returncode == 2
    assert row(conn, "SELECT count(*) AS n FROM refunds")["n"] == 3
    assert_audit_ok(conn)
