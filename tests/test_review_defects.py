"""The review's remaining defects (issue 22): F5 nothing is sent for a subscription that is over;
F7 a refused API key on a create is a misconfiguration, not a rejection; F8 every open dispute is
looked at within a bounded number of reconciler ticks."""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.factories import (
    BUYER,
    SELLER_A,
    assert_audit_ok,
    make_plan,
    paid_up,
    three_items,
    to_period_end,
    travel,
)
from tests.fake_hyperswitch import Failure, FakeHyperswitch, dispute, settle_payment
from tests.support import make_order, process, row, rows, run_cli, store_event
from veza_worker import automatic_refunds, hyperswitch, orders, reconcile
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands

REVOKED = "snd_revoked"
UNAVAILABLE = "payment provider unavailable, will be reconciled"


def creates(fake: FakeHyperswitch) -> list[Any]:
    """POST /payments calls: payment creates, not cancels."""
    return [c for c in fake.calls if c.method == "POST" and c.path == "/payments"]


def subscription(conn: psycopg.Connection[Any], subscription_id: uuid.UUID) -> dict[str, Any]:
    return row(conn, "SELECT status FROM user_subscriptions WHERE id = %s", subscription_id)


def invoice_of(conn: psycopg.Connection[Any], subscription_id: uuid.UUID) -> dict[str, Any]:
    """The subscription's last invoice."""
    return rows(
        conn,
        "SELECT id, status, submitted_at FROM subscription_invoices WHERE subscription_id = %s"
        " ORDER BY created_at DESC",
        subscription_id,
    )[0]


def refused_once(done: Any, command: str) -> None:
    """Exit 1 with the ambiguous failure's message, and one ERROR naming the variable, not its value."""
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == f"veza-worker {command}: {UNAVAILABLE}"
    errors_logged = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors_logged) == 1 and "HYPERSWITCH_API_KEY" in errors_logged[0], errors_logged
    assert REVOKED not in done.stderr


# -- F5 ---------------------------------------------------------------------------------------------


@pytest.fixture
def unsent_renewal(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> uuid.UUID:
    """A paid subscription whose renewal's create was ambiguous (it never reached the PSP), and
    whose payment cancels will fail for a while: the invoice stays pending and unsent."""
    subscription_id = paid_up(conn, client, fake, psp_settings, make_plan(conn, 999))
    to_period_end(conn, subscription_id)
    fake.fail_next("POST /payments", Failure(504, "HE_00", "gateway timeout"))
    assert billing.renew(conn, client, psp_settings)["ambiguous"] == 1
    assert invoice_of(conn, subscription_id)["submitted_at"] is None
    fake.fail_next("POST /payments/cancel", Failure(503, "HE_00", "unavailable"))
    return subscription_id


def cancel_now(conn: psycopg.Connection[Any], client: hyperswitch.Client, subscription_id: uuid.UUID) -> None:
    commands.cancel(conn, client, subscription_id, now=True)


def lose_a_dispute(conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings) -> None:
    first = row(conn, "SELECT payment_id FROM subscription_invoices WHERE status = 'paid'")["payment_id"]
    assert process(settings, store_event(conn, "dispute_lost", dispute(fake, first, "dispute_lost"))) == "ok"


@pytest.mark.parametrize("how", ["cancel-subscription --now", "a lost dispute"])
def test_f5_an_unsent_invoice_of_a_subscription_canceled_is_never_sent(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    psp: tuple[str, FakeHyperswitch],
    psp_settings: Settings,
    unsent_renewal: uuid.UUID,
    how: str,
) -> None:
    fake = psp[1]
    if how == "a lost dispute":
        lose_a_dispute(conn, fake, psp_settings)
    else:
        cancel_now(conn, client, unsent_renewal)
    assert subscription(conn, unsent_renewal)["status"] == "canceled"
    assert invoice_of(conn, unsent_renewal)["status"] == "pending"  # its cancel failed
    sent_before = len(creates(fake))
    travel(conn, unsent_renewal, timedelta(minutes=10))  # past UNSENT_AFTER

    assert billing.renew(conn, client, psp_settings)["resent"] == 0
    travel(conn, unsent_renewal, timedelta(days=1))  # stuck for the reconciler
    assert reconcile.tick(conn, client, psp_settings)["subscriptions"] == {"checked": 1, "settled": 1}

    assert len(creates(fake)) == sent_before
    assert invoice_of(conn, unsent_renewal)["status"] == "failed"
    assert subscription(conn, unsent_renewal)["status"] == "canceled"
    assert_audit_ok(conn)


# -- F7 ---------------------------------------------------------------------------------------------


def test_f7_a_refused_key_at_trial_end_leaves_the_invoices_unsent_not_the_subscriptions_expired(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    plan = make_plan(conn, 999, trial_days=7)
    trials = [
        uuid.UUID(commands.subscribe(conn, None, uuid.uuid4(), plan)["subscription_id"]) for _ in range(2)
    ]
    for subscription_id in trials:
        travel(conn, subscription_id, timedelta(days=8))

    done = run_cli("-v", "trial-end", settings=psp_settings, HYPERSWITCH_API_KEY=REVOKED)

    refused_once(done, "trial-end")
    assert len(creates(fake)) == 1  # the sweep stopped at the first refusal
    for subscription_id in trials:
        assert subscription(conn, subscription_id)["status"] == "pending_payment"
        invoice = invoice_of(conn, subscription_id)
        assert (invoice["status"], invoice["submitted_at"]) == ("pending", None)
    for subscription_id in trials:  # the key is fixed: the next renew sweep sends them
        travel(conn, subscription_id, timedelta(minutes=10))
    assert billing.renew(conn, client, psp_settings)["resent"] == 2
    assert all(invoice_of(conn, s)["submitted_at"] is not None for s in trials)
    assert_audit_ok(conn)


def test_f7_a_refused_key_on_a_renewal_leaves_it_unsent_and_the_subscription_active(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    subscription_id = paid_up(conn, client, fake, psp_settings, make_plan(conn, 999))
    to_period_end(conn, subscription_id)

    done = run_cli("-v", "renew", settings=psp_settings, HYPERSWITCH_API_KEY=REVOKED)

    refused_once(done, "renew")
    assert subscription(conn, subscription_id)["status"] == "active"
    invoice = invoice_of(conn, subscription_id)
    assert (invoice["status"], invoice["submitted_at"]) == ("pending", None)
    travel(conn, subscription_id, timedelta(minutes=10))  # the key is fixed
    assert billing.renew(conn, client, psp_settings)["paid"] == 1
    assert subscription(conn, subscription_id)["status"] == "active"
    assert_audit_ok(conn)


def test_f7_a_refused_key_on_an_automatic_refund_leaves_it_unsent_not_failed(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 4599)])
    payment_id = orders.confirm(conn, client, order_id)["payment_id"]
    failed = {**fake.payments[payment_id], "status": "failed"}
    assert process(psp_settings, store_event(conn, "payment_failed", failed)) == "ok"
    late = settle_payment(fake, payment_id, "succeeded")
    assert process(psp_settings, store_event(conn, "payment_succeeded", late)) == "ok"

    done = run_cli("-v", "automatic-refunds", settings=psp_settings, HYPERSWITCH_API_KEY=REVOKED)

    refused_once(done, "automatic-refunds")
    refund = row(conn, "SELECT status, submitted_at, error_message FROM refunds")
    assert refund == {"status": "pending", "submitted_at": None, "error_message": None}
    assert rows(conn, "SELECT 1 FROM discrepancies") == []
    assert automatic_refunds.send_unsent(conn, client) == {"sent": 1, "rejected": 0, "ambiguous": 0}
    assert_audit_ok(conn)


def test_f7_a_refused_key_on_a_refund_leaves_it_pending_without_submitted_at(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id = three_items(conn, psp_settings, fake)

    done = run_cli(
        "-v", "refund", str(order_id), "--by", str(BUYER), settings=psp_settings, HYPERSWITCH_API_KEY=REVOKED
    )

    refused_once(done, "refund")
    refund = row(conn, "SELECT status, submitted_at FROM refunds")
    assert (refund["status"], refund["submitted_at"]) == ("pending", None)  # the orphan-refunds phase's
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "refund_pending"
    assert_audit_ok(conn)


# -- F8 ---------------------------------------------------------------------------------------------


def disputed_order(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> dict[str, Any]:
    """A paid order of 100 with an open dispute the PSP's list no longer shows (paged out)."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    make_order(conn, [(SELLER_A, 100)], payment_id=payment_id)
    fake.payments[payment_id] = {"payment_id": payment_id, "amount": 100, "currency": "USD", "metadata": {}}
    paid = settle_payment(fake, payment_id, "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", paid)) == "ok"
    opened = dispute(fake, payment_id, "dispute_opened")
    assert process(settings, store_event(conn, "dispute_opened", opened)) == "ok"
    fake.unlisted.add(opened["dispute_id"])
    return opened


def test_f8_every_open_dispute_is_looked_at_within_a_bounded_number_of_ticks(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    opened = [disputed_order(conn, fake, psp_settings) for _ in range(60)]
    last = opened[-1]  # the most recently updated: never in the first batch by updated_at
    dispute(fake, last["payment_id"], "dispute_lost", dispute_id=last["dispute_id"])  # its webhook lost
    settings = dataclasses.replace(psp_settings, reconcile_batch_size=25)

    for _ in range(math.ceil(60 / 25)):
        reconcile.tick(conn, client, settings)

    asked = {c.path.removeprefix("/disputes/") for c in fake.calls_to("GET", "/disputes/dp_")}
    assert asked == {d["dispute_id"] for d in opened}
    assert (
        row(conn, "SELECT status FROM disputes WHERE id = %s", last["dispute_id"])["status"] == "dispute_lost"
    )
    assert row(conn, "SELECT status FROM orders WHERE payment_id = %s", last["payment_id"])["status"] == (
        "charged_back"
    )
    assert_audit_ok(conn)
