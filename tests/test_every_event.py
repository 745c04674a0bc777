"""The events round 3 adds (DESIGN.md "The books match the PSP's"): a payment cancelled after
capture, an expired payment, a 3DS demand on an off-session renewal, the informational ones, and
refunds made at the PSP of a subscription invoice's payment. Each replayed: nothing moves twice."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.factories import (
    BUYER,
    REFUND_WINDOW,
    SELLER_A,
    SELLER_B,
    account,
    assert_audit_ok,
    failed_automatic_refund,
    make_plan,
    paid_up,
    payment_of,
    psp_settles,
    state,
    three_items,
    to_period_end,
)
from tests.fake_hyperswitch import (
    FakeHyperswitch,
    cancel_after_capture,
    refund_from_dashboard,
    settle_payment,
    settle_refund,
)
from tests.support import PSP_API_KEY, make_order, process, row, rows, store_event
from veza_worker import automatic_refunds, hyperswitch, ledger, refunds
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands, invoices, model

INFORMATIONAL = [
    "payment_processing",
    "payment_authorized",
    "payment_partially_authorized",
    "mandate_active",
    "invoice_paid",
]


def delivered_twice_more(
    conn: psycopg.Connection[Any], settings: Settings, event_type: str, obj: Any
) -> list[Any]:
    """The same event delivered again (its log row replayed) and as a new delivery: both results."""
    log_id = store_event(conn, event_type, obj)
    return [process(settings, log_id), process(settings, store_event(conn, event_type, obj))]


@pytest.fixture
def renewal_in_flight(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> dict[str, Any]:
    """An off-session renewal the PSP holds `processing`: the pending invoice's id and payment_id."""
    to_period_end(conn, paid_up(conn, client, fake, psp_settings, make_plan(conn, 999)))
    fake.off_session_outcomes.append("processing")
    billing.renew(conn, client, psp_settings)
    return row(conn, "SELECT id, payment_id FROM subscription_invoices WHERE status = 'pending'")


# -- payment_cancelled_post_capture -----------------------------------------------------------------


def test_a_payment_cancelled_after_capture_reverses_what_is_left_of_the_order(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    settings: Settings,
    psp: tuple[str, FakeHyperswitch],
) -> None:
    fake = psp[1]
    order_id = three_items(conn, settings, fake)
    b200 = row(conn, "SELECT id FROM order_items WHERE order_id = %s AND seller_id = %s", order_id, SELLER_B)
    out = refunds.request(conn, client, order_id, BUYER, items=[b200["id"]], refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, out)  # seller B's item was refunded first: 800 is left
    payment_id = payment_of(conn, order_id)
    cancelled = httpx.post(  # staff cancel it after capture through the API
        f"{psp[0]}/payments/{payment_id}/cancel_post_capture",
        json={"cancellation_reason": "requested_by_customer"},
        headers={"api-key": PSP_API_KEY},
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled_post_capture"

    result = process(settings, store_event(conn, "payment_cancelled_post_capture", cancelled.json()))

    assert result == "ok"
    done = state(conn, order_id)
    assert done == {
        "order": ("refunded", 1000),
        "balances": {SELLER_A: 0, SELLER_B: 0},
        "live_licenses": [],
        "transfers": [("A", "reversed", 800), ("B", "reversed", 200)],
    }
    reversal = row(
        conn,
        "SELECT id, amount, status, note FROM refunds WHERE order_id = %s AND requested_by IS NULL",
        order_id,
    )
    assert (reversal["amount"], reversal["status"]) == (800, "succeeded")
    assert reversal["note"] == refunds.CANCELLED_NOTE
    posting = row(conn, "SELECT order_id, kind FROM ledger_transactions WHERE refund_id = %s", reversal["id"])
    assert posting == {"order_id": order_id, "kind": ledger.Kind.REFUND}
    assert delivered_twice_more(conn, settings, "payment_cancelled_post_capture", cancelled.json()) == [
        "skipped: nothing left to reverse",
        "skipped: nothing left to reverse",
    ]
    assert state(conn, order_id) == done
    assert_audit_ok(conn)


def test_a_payment_cancelled_after_capture_of_a_paid_invoice_cancels_the_subscription(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, paid_invoice: dict[str, Any]
) -> None:
    invoice = paid_invoice
    assert account(conn, ledger.REVENUE) == 999

    cancelled = cancel_after_capture(fake, invoice["payment_id"])
    assert process(settings, store_event(conn, "payment_cancelled_post_capture", cancelled)) == "ok"

    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"
    reversal = row(conn, "SELECT amount, status, invoice_id FROM refunds")
    assert reversal == {"amount": 999, "status": "succeeded", "invoice_id": invoice["id"]}
    assert account(conn, ledger.REVENUE) == 0
    assert delivered_twice_more(conn, settings, "payment_cancelled_post_capture", cancelled) == [
        "skipped: nothing left to reverse",
        "skipped: nothing left to reverse",
    ]
    assert account(conn, ledger.REVENUE) == 0 and len(rows(conn, "SELECT 1 FROM refunds")) == 1
    assert_audit_ok(conn)


@pytest.mark.parametrize(
    ("event_type", "status"),
    [("payment_expired", "expired"), ("payment_cancelled_post_capture", "cancelled_post_capture")],
)
def test_a_payment_that_expired_or_was_cancelled_after_capture_while_pending_fails_the_order(
    conn: psycopg.Connection[Any], settings: Settings, event_type: str, status: str
) -> None:
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(conn, [(SELLER_A, 700)], payment_id=payment_id)
    obj = {"payment_id": payment_id, "status": status, "amount": 700, "currency": "USD"}

    assert process(settings, store_event(conn, event_type, obj)) == "ok"  # as payment_failed

    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"
    assert delivered_twice_more(conn, settings, event_type, obj) == [
        "skipped: order already failed",
        "skipped: order already failed",
    ]
    assert rows(conn, "SELECT 1 FROM ledger_transactions") == []
    assert_audit_ok(conn)


# -- action_required ----------------------------------------------------------------------------------


def test_action_required_on_an_off_session_renewal_cancels_it_and_dunning_begins(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    psp_settings: Settings,
    renewal_in_flight: dict[str, Any],
) -> None:
    renewal = renewal_in_flight
    fake.payments[renewal["payment_id"]]["status"] = "requires_customer_action"  # the bank wants 3DS

    action = dict(fake.payments[renewal["payment_id"]])
    assert process(psp_settings, store_event(conn, "action_required", action)) == "ok"

    assert [c.path for c in fake.calls_to("POST", "/payments/")] == [
        f"/payments/{renewal['payment_id']}/cancel"
    ]
    assert fake.payments[renewal["payment_id"]]["status"] == "cancelled"
    assert (
        row(conn, "SELECT status FROM subscription_invoices WHERE id = %s", renewal["id"])["status"]
        == "failed"
    )
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "past_due"
    assert delivered_twice_more(conn, psp_settings, "action_required", action) == [
        "skipped: informational",
        "skipped: informational",
    ]
    assert len(fake.calls_to("POST", "/payments/")) == 1
    assert_audit_ok(conn)


def test_action_required_on_a_payment_the_customer_is_making_is_informational(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    out = commands.subscribe(conn, client, uuid.uuid4(), make_plan(conn, 999))
    action = {**fake.payments[out["payment_id"]], "status": "requires_customer_action"}

    assert [process(settings, store_event(conn, "action_required", action)) for _ in range(3)] == [
        "skipped: informational"
    ] * 3

    assert row(conn, "SELECT status FROM subscription_invoices")["status"] == "pending"
    assert fake.calls_to("POST", "/payments/") == []


# -- informational --------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", INFORMATIONAL)
def test_an_informational_event_is_recorded_and_changes_nothing(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, event_type: str
) -> None:
    order_id = three_items(conn, settings, fake)
    before = state(conn, order_id)
    obj = {**fake.payments[payment_of(conn, order_id)], "status": "processing"}

    results = [
        process(settings, store_event(conn, event_type, obj)),
        *delivered_twice_more(conn, settings, event_type, obj),
    ]

    assert results == ["skipped: informational"] * 3
    logged = rows(
        conn, "SELECT processing_result FROM hyperswitch_webhook_log WHERE event_type = %s", event_type
    )
    assert [r["processing_result"] for r in logged] == ["skipped: informational"] * 3
    assert state(conn, order_id) == before
    assert_audit_ok(conn)


# -- refunds made at the PSP of a subscription invoice's payment --------------------------------------


def test_dashboard_refunds_of_an_invoice_payment_are_adopted_and_in_full_cancel_the_subscription(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, paid_invoice: dict[str, Any]
) -> None:
    partial = refund_from_dashboard(fake, paid_invoice["payment_id"], 300, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", partial)) == "ok"

    adopted = row(conn, "SELECT id, invoice_id, order_id, amount, status, automatic FROM refunds")
    assert (adopted["invoice_id"], adopted["order_id"], adopted["amount"]) == (paid_invoice["id"], None, 300)
    assert (adopted["status"], adopted["automatic"]) == ("succeeded", False)
    assert account(conn, ledger.REVENUE) == 699
    posting = row(
        conn, "SELECT invoice_id, order_id FROM ledger_transactions WHERE refund_id = %s", adopted["id"]
    )
    assert posting == {"invoice_id": paid_invoice["id"], "order_id": None}
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "active"  # it goes on
    assert delivered_twice_more(conn, settings, "refund_succeeded", partial) == [
        "skipped: refund already succeeded",
        "skipped: refund already succeeded",
    ]
    assert account(conn, ledger.REVENUE) == 699
    assert_audit_ok(conn)

    rest = refund_from_dashboard(fake, paid_invoice["payment_id"], 699, "pending")  # the rest, pending first
    assert process(settings, store_event(conn, "refund_succeeded", {**rest, "status": "pending"})) == "ok"
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "active"  # not back yet
    rest["status"] = "succeeded"
    assert process(settings, store_event(conn, "refund_succeeded", rest)) == "ok"

    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"  # paid back in full
    assert [r["status"] for r in rows(conn, "SELECT status FROM refunds")] == ["succeeded"] * 2
    assert account(conn, ledger.REVENUE) == 0
    assert delivered_twice_more(conn, settings, "refund_succeeded", rest) == [
        "skipped: refund already succeeded",
        "skipped: refund already succeeded",
    ]
    assert account(conn, ledger.REVENUE) == 0
    assert_audit_ok(conn)


# -- refunds made at the PSP of an invoice's money held in suspense, and over-returns -----------------


@pytest.fixture
def twice(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    paid_invoice: dict[str, Any],
) -> dict[str, Any]:
    """A second invoice paid for the period the first one paid for: its money revenue → suspense,
    its automatic refund failed at the PSP. Its id, payment_id and the automatic refund's id."""
    subscription_id = row(conn, "SELECT subscription_id FROM subscription_invoices")["subscription_id"]
    subscription = model.lock(conn, subscription_id)
    assert subscription is not None
    again = invoices.new(conn, subscription, subscription.current_period_start, off_session=True)
    assert again is not None
    conn.commit()
    fake.payments[again.payment_id] = {"payment_id": again.payment_id, "amount": 999, "currency": "EUR"}
    fake.payments[again.payment_id].update(status="succeeded", client_secret="cs", metadata={})
    settle_payment(fake, again.payment_id, "succeeded")
    paid = {"payment_id": again.payment_id, "status": "succeeded", "amount": 999, "currency": "EUR"}
    assert process(settings, store_event(conn, "payment_succeeded", paid)) == "ok"
    assert automatic_refunds.send_unsent(conn, client)["sent"] == 1
    automatic = row(conn, "SELECT id, hyperswitch_refund_id FROM refunds WHERE automatic")
    failed = settle_refund(fake, automatic["hyperswitch_refund_id"], "failed", "card closed")
    assert process(settings, store_event(conn, "refund_failed", dict(failed))) == "ok"
    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (999, 999)
    return {"id": again.id, "payment_id": again.payment_id, "automatic": automatic["id"]}


def open_discrepancies(conn: psycopg.Connection[Any]) -> list[str]:
    return [r["kind"] for r in rows(conn, "SELECT kind FROM discrepancies WHERE resolved_at IS NULL")]


def test_a_dashboard_refund_of_an_invoice_paid_twice_drains_suspense_and_the_subscription_goes_on(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    twice: dict[str, Any],
) -> None:
    assert open_discrepancies(conn) == ["automatic_refund_failed"]

    part = refund_from_dashboard(fake, twice["payment_id"], 400, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", part)) == "ok"
    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (999, 599)
    assert open_discrepancies(conn) == ["automatic_refund_failed"]  # not all given back yet
    assert_audit_ok(conn)

    rest = refund_from_dashboard(fake, twice["payment_id"], 599, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", rest)) == "ok"

    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (999, 0)
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "active"  # invoice A paid for it
    assert open_discrepancies(conn) == []  # the dashboard gave back what the automatic refund could not
    assert delivered_twice_more(conn, settings, "refund_succeeded", rest) == [
        "skipped: refund already succeeded",
        "skipped: refund already succeeded",
    ]
    assert account(conn, ledger.SUSPENSE) == 0
    assert_audit_ok(conn)


def test_a_payment_cancelled_after_capture_of_an_invoice_paid_twice_drains_suspense(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    twice: dict[str, Any],
) -> None:
    cancelled = cancel_after_capture(fake, twice["payment_id"])
    assert process(settings, store_event(conn, "payment_cancelled_post_capture", cancelled)) == "ok"

    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (999, 0)
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "active"
    assert open_discrepancies(conn) == []
    assert_audit_ok(conn)


def test_a_dashboard_refund_of_a_failed_invoice_paid_late_drains_suspense_not_revenue(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    failed = failed_automatic_refund(conn, settings, client, fake, invoice=True)

    back = refund_from_dashboard(fake, failed["payment_id"], failed["amount"], "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", back)) == "ok"

    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (0, 0)
    assert account(conn, ledger.UNALLOCATED) == 0
    assert open_discrepancies(conn) == []
    assert_audit_ok(conn)


def test_a_dashboard_refund_adopted_after_a_post_capture_cancel_returns_no_more_than_the_invoice(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, paid_invoice: dict[str, Any]
) -> None:
    part = refund_from_dashboard(fake, paid_invoice["payment_id"], 300, "succeeded")
    cancelled = cancel_after_capture(fake, paid_invoice["payment_id"])  # the other 699, its event first
    assert process(settings, store_event(conn, "payment_cancelled_post_capture", cancelled)) == "ok"
    assert account(conn, ledger.REVENUE) == 0

    assert process(settings, store_event(conn, "refund_succeeded", part)) == "ok"

    assert account(conn, ledger.REVENUE) == 0  # never below what the invoice brought in
    assert account(conn, ledger.UNALLOCATED) == -300
    assert open_discrepancies(conn) == ["refund_unmatched"]
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"
    assert_audit_ok(conn)


def test_a_payment_cancelled_after_capture_of_a_failed_invoice_paid_late_drains_suspense(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    failed = failed_automatic_refund(conn, settings, client, fake, invoice=True)

    cancelled = cancel_after_capture(fake, failed["payment_id"])
    assert process(settings, store_event(conn, "payment_cancelled_post_capture", cancelled)) == "ok"

    assert (account(conn, ledger.REVENUE), account(conn, ledger.SUSPENSE)) == (0, 0)
    assert open_discrepancies(conn) == []
    assert delivered_twice_more(conn, settings, "payment_cancelled_post_capture", cancelled) == [
        "skipped: nothing left to reverse",
        "skipped: nothing left to reverse",
    ]
    assert account(conn, ledger.SUSPENSE) == 0
    assert_audit_ok(conn)
