"""The reconciler against the fake PSP: every stuck row settles from live PSP state, nothing else moves."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.factories import SELLER, OwnConnections, order_status, stuck_order
from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment, settle_refund, webhook_body
from tests.support import (
    at_once,
    join,
    log_rows,
    make_order,
    make_pending_refund,
    post_webhook,
    process,
    row,
    rows,
    run_cli,
    store_event,
)
from veza_worker import hyperswitch, reconcile
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands


def a_tick_later(conn: psycopg.Connection[Any]) -> None:
    """As if the last checks were a tick ago: past the reconciler's one-minute cool-down."""
    conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")


NOTHING_CHECKED = {
    phase: {"checked": 0}
    for phase in (
        "orders",
        "refunds",
        "orphan_refunds",
        "invoice_refunds",
        "subscriptions",
        "payouts",
        "disputes",
    )
}  # what a tick answers when no row is due


def gets(fake: FakeHyperswitch) -> list[str]:
    """The rows the reconciler asked about (its dispute list call aside)."""
    return [c.path for c in fake.calls if c.method == "GET" and not c.path.startswith("/disputes")]


# -- orders -----------------------------------------------------------------------------------------


def test_a_stuck_order_is_synced_through_the_payment_handler_and_audited(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, tick: Any
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "succeeded")

    counts = tick()

    assert counts["orders"] == {"checked": 1, "settled": 1}
    assert order_status(conn, order_id) == "completed"
    assert len(rows(conn, "SELECT 1 FROM licenses")) == 2
    [audit] = log_rows(conn)
    assert audit["user_agent"] == "veza-worker-reconciler" and audit["signature_valid"] is True
    assert audit["event_id"] is None and audit["event_type"] == "payment_succeeded"
    assert audit["processing_result"] == "ok" and audit["processed_at"] is not None
    assert json.loads(audit["payload"])["content"]["object"] == fake.payments[payment_id]
    [call] = fake.calls_to("GET", "/payments")
    assert call.query == "force_sync=true"


@pytest.mark.parametrize(
    ("psp_status", "expected"),
    [("failed", "failed"), ("cancelled", "failed"), ("expired", "failed"), (None, "failed")],
    ids=["failed", "cancelled", "expired", "not-found"],
)
def test_a_stuck_order_whose_payment_failed_or_never_existed_fails(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Any,
    psp_status: str | None,
    expected: str,
) -> None:
    order_id, _ = stuck_order(conn, client, fake, psp_status)
    tick()
    assert order_status(conn, order_id) == expected


def test_recent_completed_and_unconfirmed_orders_are_left_alone(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, tick: Any
) -> None:
    recent, _ = stuck_order(conn, client, fake, "succeeded", age="5 minutes")
    completed, _ = stuck_order(conn, client, fake, "succeeded")
    conn.execute("UPDATE orders SET status = 'completed' WHERE id = %s", [completed])
    unconfirmed = make_order(conn, [(SELLER, 100)])
    conn.execute("UPDATE orders SET created_at = now() - interval '2 hours' WHERE id = %s", [unconfirmed])

    assert tick()["orders"] == {"checked": 0}

    assert gets(fake) == []
    assert order_status(conn, recent) == "pending" and order_status(conn, unconfirmed) == "pending"


def test_a_psp_read_error_leaves_the_row_for_the_next_tick(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, tick: Any
) -> None:
    order_id, _ = stuck_order(conn, client, fake, "succeeded")
    fake.fail_next("GET /payments", Failure(status=503))

    assert tick()["orders"] == {"checked": 1, "psp_error": 1}
    assert order_status(conn, order_id) == "pending" and log_rows(conn) == []
    assert rows(conn, "SELECT 1 FROM reconcile_state") == []  # an error is no answer: no cool-down

    assert tick()["orders"] == {"checked": 1, "settled": 1}  # a manual tick right after retries it
    assert order_status(conn, order_id) == "completed"


def test_the_batch_limit_is_respected_oldest_first(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, tick: Any
) -> None:
    orders = [stuck_order(conn, client, fake, "succeeded", age=f"{60 + i} minutes")[0] for i in range(7)]

    assert tick(reconcile_batch_size=3)["orders"] == {"checked": 3, "settled": 3}

    assert [order_status(conn, o) for o in orders] == ["pending"] * 4 + ["completed"] * 3


def test_rows_the_psp_keeps_pending_do_not_starve_newer_ones_and_need_a_human_after_five_answers(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forever, _ = stuck_order(conn, client, fake, "processing", age="3 hours")

    with caplog.at_level(logging.INFO, logger="veza_worker.reconcile"):
        for _ in range(6):
            tick(reconcile_batch_size=1)
            a_tick_later(conn)
        newer, _ = stuck_order(conn, client, fake, "succeeded", age="1 hour")
        tick(reconcile_batch_size=1)

    assert order_status(conn, newer) == "completed" and order_status(conn, forever) == "pending"
    human = [r.getMessage() for r in caplog.records if "reconcile needs a human" in r.getMessage()]
    assert len(human) == 1 and str(forever) in human[0] and "psp_status=processing checks=5" in human[0]
    actions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reconcile phase=orders")]
    assert len(actions) == 7 and f"id={forever}" in actions[0] and "stuck_for_s=108" in actions[0]


def test_two_ticks_in_parallel_check_each_row_once(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    psp_settings: Settings,
    own_connections: OwnConnections,
) -> None:
    for _ in range(20):
        stuck_order(conn, client, fake, "processing")
    totals: list[int] = []

    def run() -> None:
        with own_connections() as (own, own_client):
            totals.append(reconcile.tick(own, own_client, psp_settings)["orders"]["checked"])

    at_once(*[run] * 3)

    assert sum(totals) == 20 and len(gets(fake)) == 20


def test_a_late_real_webhook_after_reconciliation_is_a_visible_no_op(
    receiver: str,
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Any,
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
) -> None:
    _, payment_id = stuck_order(conn, client, fake, "succeeded")
    tick()

    post_webhook(receiver, webhook_body("payment_succeeded", fake.payments[payment_id]))
    join(broker)

    assert [(r["user_agent"], r["processing_result"]) for r in log_rows(conn)] == [
        ("veza-worker-reconciler", "ok"),
        ("python-httpx/0.28.1", "skipped: order already completed"),
    ]
    assert len(rows(conn, "SELECT 1 FROM licenses")) == 2


# -- refunds ----------------------------------------------------------------------------------------


@pytest.fixture
def refundable(conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch) -> Any:
    """A completed, paid order and a pending refund of it: (order id, refund row id, psp refund id)."""

    def make(*, submitted: str | None, created: str = "1 hour", psp_status: str | None = None) -> Any:
        order_id, payment_id = stuck_order(conn, client, fake, "succeeded")
        conn.execute("UPDATE orders SET status = 'completed', completed_at = now() WHERE id = %s", [order_id])
        refund_id = make_pending_refund(conn, order_id, hyperswitch.merchant_id("ref", uuid.uuid4()))
        psp_id = row(conn, "SELECT hyperswitch_refund_id FROM refunds WHERE id = %s", refund_id)[
            "hyperswitch_refund_id"
        ]
        conn.execute(
            "UPDATE refunds SET created_at = now() - %s::interval,"
            " submitted_at = now() - %s::interval WHERE id = %s",
            [created, submitted, refund_id],
        )
        if psp_status is not None:
            client.create_refund(
                refund_id=psp_id,
                payment_id=payment_id,
                amount=row(conn, "SELECT total_amount FROM orders WHERE id = %s", order_id)["total_amount"],
                reason="duplicate",
                idempotency_key="k",
                metadata={},
            )
            if psp_status != "pending":
                settle_refund(
                    fake,
                    psp_id,
                    psp_status,
                    "Insufficient funds in merchant account" if psp_status == "failed" else None,
                )
        return order_id, refund_id, psp_id

    return make


def refund_row(conn: psycopg.Connection[Any], refund_id: uuid.UUID) -> dict[str, Any]:
    return row(conn, "SELECT * FROM refunds WHERE id = %s", refund_id)


def test_a_stuck_refund_is_synced(conn: psycopg.Connection[Any], refundable: Any, tick: Any) -> None:
    order_id, refund_id, _ = refundable(submitted="1 hour", psp_status="succeeded")

    assert tick()["refunds"] == {"checked": 1, "settled": 1}

    assert refund_row(conn, refund_id)["status"] == "succeeded"
    assert order_status(conn, order_id) == "refunded"


def test_a_stuck_refund_failure_passes_the_psp_error_message(
    conn: psycopg.Connection[Any], refundable: Any, tick: Any
) -> None:
    order_id, refund_id, _ = refundable(submitted="1 hour", psp_status="failed")

    tick()

    refund = refund_row(conn, refund_id)
    assert (
        refund["status"] == "failed" and refund["error_message"] == "Insufficient funds in merchant account"
    )
    assert order_status(conn, order_id) == "completed"


def test_an_orphan_refund_unknown_to_the_psp_fails_and_the_order_rolls_back(
    conn: psycopg.Connection[Any], refundable: Any, tick: Any, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, refund_id, psp_id = refundable(submitted=None, created="10 minutes")

    assert tick()["orphan_refunds"] == {"checked": 1, "settled": 1}

    refund = refund_row(conn, refund_id)
    assert (
        refund["status"] == "failed"
        and refund["error_message"] == "refund never reached the payment provider"
    )
    assert order_status(conn, order_id) == "completed"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and psp_id in errors[0] and "never reached the payment provider" in errors[0]


@pytest.mark.parametrize(("psp_status", "expected"), [("succeeded", "succeeded"), ("failed", "failed")])
def test_an_orphan_refund_the_psp_holds_adopts_its_status(
    conn: psycopg.Connection[Any], refundable: Any, tick: Any, psp_status: str, expected: str
) -> None:
    _, refund_id, _ = refundable(submitted=None, created="10 minutes", psp_status=psp_status)
    tick()
    refund = refund_row(conn, refund_id)
    assert refund["status"] == expected and refund["submitted_at"] is not None


def test_an_orphan_refund_the_psp_holds_as_pending_becomes_an_ordinary_submitted_refund(
    conn: psycopg.Connection[Any], refundable: Any, tick: Any
) -> None:
    _, refund_id, _ = refundable(submitted=None, created="10 minutes", psp_status="pending")

    assert tick()["orphan_refunds"] == {"checked": 1, "adopted": 1}

    refund = refund_row(conn, refund_id)
    assert refund["status"] == "pending" and refund["submitted_at"] is not None
    assert tick() == NOTHING_CHECKED


def test_a_recent_orphan_is_left_alone(
    conn: psycopg.Connection[Any], refundable: Any, fake: FakeHyperswitch, tick: Any
) -> None:
    _, refund_id, _ = refundable(submitted=None, created="1 minute")
    assert tick()["orphan_refunds"] == {"checked": 0}
    assert refund_row(conn, refund_id)["status"] == "pending"
    assert [p for p in gets(fake) if p.startswith("/refunds")] == []


# -- subscriptions ----------------------------------------------------------------------------------


@pytest.fixture
def pending_subscription(conn: psycopg.Connection[Any], client: hyperswitch.Client) -> dict[str, Any]:
    plan_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO subscription_plans (id, name, amount, currency, interval)"
        " VALUES (%s, 'Pro', 999, 'EUR', 'month')",
        [plan_id],
    )
    out = commands.subscribe(conn, client, uuid.uuid4(), plan_id)
    conn.execute("UPDATE user_subscriptions SET updated_at = now() - interval '1 hour'")
    conn.execute("UPDATE subscription_invoices SET created_at = now() - interval '1 hour'")
    return out


def subscription_status(conn: psycopg.Connection[Any]) -> str:
    return str(row(conn, "SELECT status FROM user_subscriptions")["status"])


def test_a_stuck_subscription_whose_payment_succeeded_is_activated(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, tick: Any, pending_subscription: dict[str, Any]
) -> None:
    settle_payment(fake, pending_subscription["payment_id"], "succeeded")

    assert tick()["subscriptions"] == {"checked": 1, "settled": 1}

    assert subscription_status(conn) == "active"
    assert row(conn, "SELECT status FROM subscription_invoices")["status"] == "paid"


def test_a_stuck_subscription_whose_payment_the_psp_never_had_expires(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, tick: Any, pending_subscription: dict[str, Any]
) -> None:
    del fake.payments[pending_subscription["payment_id"]]
    tick()
    assert subscription_status(conn) == "expired"


def test_a_stuck_unpaid_subscription_gets_its_missing_client_secret(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, tick: Any, pending_subscription: dict[str, Any]
) -> None:
    conn.execute("UPDATE subscription_invoices SET client_secret = NULL")

    assert tick()["subscriptions"] == {"checked": 1, "client_secret_stored": 1}

    secret = row(conn, "SELECT client_secret FROM subscription_invoices")["client_secret"]
    assert secret == fake.payments[pending_subscription["payment_id"]]["client_secret"]
    assert subscription_status(conn) == "pending_payment"


# -- terminal rows, the CLI and the actor -----------------------------------------------------------


def test_every_terminal_state_is_a_no_op(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    refundable: Any,
    tick: Any,
    pending_subscription: dict[str, Any],
) -> None:
    for status in ("completed", "failed", "refunded", "refund_pending"):
        order_id, _ = stuck_order(conn, client, fake, "succeeded")
        conn.execute("UPDATE orders SET status = %s WHERE id = %s", [status, order_id])
    for status in ("succeeded", "failed"):
        _, refund_id, _ = refundable(submitted="1 hour", created="2 hours")
        conn.execute("UPDATE refunds SET status = %s WHERE id = %s", [status, refund_id])
    for status in ("paid", "failed"):  # the subscription's invoice is what the phase looks at
        conn.execute("UPDATE subscription_invoices SET status = %s", [status])
        fake.calls.clear()

        assert tick() == NOTHING_CHECKED
        assert gets(fake) == []


def test_the_reconcile_command_prints_per_phase_counts(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    stuck_order(conn, client, fake, "succeeded")

    done = run_cli("reconcile", settings=psp_settings)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "orders": {"checked": 1, "settled": 1},
        "refunds": {"checked": 0},
        "orphan_refunds": {"checked": 0},
        "invoice_refunds": {"checked": 0},
        "subscriptions": {"checked": 0},
        "payouts": {"checked": 0},
        "disputes": {"checked": 0},
    }
    without = run_cli("reconcile", settings=psp_settings, HYPERSWITCH_ENABLED="false")
    assert without.returncode == 1 and "payment provider not configured" in without.stderr


def test_an_order_that_a_real_webhook_settled_meanwhile_is_not_touched(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Any,
    psp_settings: Settings,
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "succeeded")
    process(psp_settings, store_event(conn, "payment_succeeded", fake.payments[payment_id]))

    assert tick()["orders"] == {"checked": 0}
    assert gets(fake) == [] and order_status(conn, order_id) == "completed"
