"""A lost dispute on a subscription's payment cancels it the way `cancel-subscription --now` does."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.fake_hyperswitch import FakeHyperswitch, dispute, settle_payment
from tests.support import process, row, rows, store_event
from veza_worker import hyperswitch
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands


@pytest.fixture
def first_payment(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> str:
    """A subscription whose first payment (this PSP payment id) is paid and whose renewal waits
    for the customer: an on-session payment, pending at the PSP."""
    found = conn.execute(
        "INSERT INTO subscription_plans (name, amount, currency, interval)"
        " VALUES ('monthly', 999, 'EUR', 'month') RETURNING id"
    ).fetchone()
    assert found is not None
    out = commands.subscribe(conn, client, uuid.uuid4(), found[0])
    paid = settle_payment(fake, out["payment_id"], "succeeded")
    assert process(psp_settings, store_event(conn, "payment_succeeded", paid)) == "ok"
    # No saved method when the period ends: the renewal is an on-session payment.
    conn.execute(
        "UPDATE user_subscriptions"
        " SET payment_method_id = NULL, current_period_end = now() - interval '1 hour'"
    )
    assert billing.renew(conn, client, psp_settings)["on_session"] == 1
    return str(out["payment_id"])


def test_a_lost_dispute_cancels_the_pending_invoice_payment_at_the_psp(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, first_payment: str
) -> None:
    renewal = row(conn, "SELECT id, payment_id FROM subscription_invoices WHERE status = 'pending'")

    lost = dispute(fake, first_payment, "dispute_lost")
    assert process(psp_settings, store_event(conn, "dispute_lost", lost)) == "ok"

    cancel = f"/payments/{renewal['payment_id']}/cancel"
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"
    assert [c.path for c in fake.calls_to("POST", "/payments/")] == [cancel]
    assert fake.payments[renewal["payment_id"]]["status"] == "cancelled"
    invoice = row(conn, "SELECT status FROM subscription_invoices WHERE id = %s", renewal["id"])
    assert invoice["status"] == "failed"


def test_a_lost_dispute_without_a_payment_provider_leaves_the_pending_payment_to_the_reconciler(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, first_payment: str
) -> None:
    lost = dispute(fake, first_payment, "dispute_lost")
    assert process(settings, store_event(conn, "dispute_lost", lost)) == "ok"

    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"
    assert fake.calls_to("POST", "/payments/") == []
    assert len(rows(conn, "SELECT 1 FROM subscription_invoices WHERE status = 'pending'")) == 1
