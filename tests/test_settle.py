"""settle: the PSP's lists walked both ways against our books, with drift the PSP made silently
(no webhook): what our handlers can apply is applied as a synthetic delivery, the rest opens a
discrepancy, and a second run over the same window changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg

from tests import fake_hyperswitch
from tests.factories import (
    REFUND_WINDOW,
    SELLER,
    account,
    assert_audit_ok,
    failed_automatic_refund,
    order_status,
    payment_of,
    psp_settles,
    stuck_order,
    three_items,
)
from tests.fake_hyperswitch import FakeHyperswitch, refund_from_dashboard, settle_payment, settle_refund
from tests.support import PSP_API_KEY, make_order, process, row, rows, run_cli, store_event
from veza_worker import hyperswitch, ledger, refunds, settle
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands


def settle_now(psp_settings: Settings, **window: str) -> dict[str, Any]:
    """One `settle` run, on its own connection and client, as the command runs it."""
    client = hyperswitch.Client(str(psp_settings.hyperswitch_url), PSP_API_KEY)
    try:
        with psycopg.connect(psp_settings.database_url) as own:
            return settle.run(own, client, psp_settings, **window)
    finally:
        client.close()


def open_kinds(conn: psycopg.Connection[Any]) -> list[str]:
    return sorted(r["kind"] for r in rows(conn, "SELECT kind FROM discrepancies WHERE resolved_at IS NULL"))


def synthetic_results(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    query = (
        "SELECT event_type, processing_result FROM hyperswitch_webhook_log"
        " WHERE user_agent = 'veza-worker-reconciler' ORDER BY id"
    )
    return [(r["event_type"], r["processing_result"]) for r in rows(conn, query)]


def requested_refund(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, order_id: uuid.UUID
) -> dict[str, Any]:
    """The buyer refunds the whole order; the PSP holds it pending."""
    buyer = row(conn, "SELECT buyer_id FROM orders WHERE id = %s", order_id)["buyer_id"]
    return refunds.request(conn, client, order_id, buyer, refund_window=REFUND_WINDOW)


def failed_order(conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch) -> uuid.UUID:
    """An order whose payment failed, as its webhook said."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(conn, [(SELLER, 600)], payment_id=payment_id)
    fake.payments[payment_id] = {
        "payment_id": payment_id,
        "status": "failed",
        "amount": 600,
        "currency": "USD",
        "created": fake_hyperswitch.timestamp(),
    }
    assert process(settings, store_event(conn, "payment_failed", fake.payments[payment_id])) == "ok"
    return order_id


# -- four kinds of drift and more, found by one run --------------------------------------------------


def test_one_settle_applies_or_opens_every_kind_of_silent_drift_and_a_second_run_changes_nothing(
    conn: psycopg.Connection[Any],
    settings: Settings,
    psp_settings: Settings,
    fake: FakeHyperswitch,
    client: hyperswitch.Client,
) -> None:
    # Applied: a payment that succeeded while we hold it pending (its webhook lost) ...
    pending, _ = stuck_order(conn, client, fake, "succeeded")
    # ... one that succeeded after we saw it fail (money kept for nothing: refunded automatically) ...
    failed = failed_order(conn, settings, fake)
    settle_payment(fake, payment_of(conn, failed), "succeeded")
    # ... a refund made in the dashboard during an outage of our receiver ...
    dashboard = three_items(conn, settings, fake)
    refund_from_dashboard(fake, payment_of(conn, dashboard), 1000, "succeeded")
    # ... and a refund final there, pending here.
    asked = three_items(conn, settings, fake)
    out = requested_refund(conn, client, asked)
    settle_refund(fake, out["hyperswitch_refund_id"], "succeeded")
    # Opened: an amount that differs, a payment of our making we never made, a refund we hold
    # succeeded that the PSP failed.
    mismatched = three_items(conn, settings, fake)
    fake_hyperswitch.change_amount(fake, payment_of(conn, mismatched), 900)
    unknown = fake_hyperswitch.payment_we_never_made(fake, 4200)
    reversed_refund = three_items(conn, settings, fake)
    psp_settles(conn, settings, fake, requested_refund(conn, client, reversed_refund))
    [reversed_psp_id] = [
        r for r, obj in fake.refunds.items() if obj["payment_id"] == payment_of(conn, reversed_refund)
    ]
    settle_refund(fake, reversed_psp_id, "failed", "reversed by the bank")

    first = settle_now(psp_settings)

    assert first == {
        "payments_seen": len(fake.payments),
        "refunds_seen": len(fake.refunds),
        "applied": 4,
        "discrepancies": {
            "payment_amount_mismatch": 1,
            "payment_unknown": 1,
            "refund_failed_after_succeeded": 1,
        },
    }
    assert order_status(conn, pending) == "completed"
    assert row(conn, "SELECT amount, automatic FROM refunds WHERE order_id = %s", failed) == {
        "amount": 600,
        "automatic": True,
    }
    assert order_status(conn, dashboard) == "refunded"
    assert order_status(conn, asked) == "refunded"
    [found] = rows(conn, "SELECT detail, subject, amount FROM discrepancies WHERE kind = 'payment_unknown'")
    assert unknown["payment_id"] in found["detail"] and found["subject"] == unknown["payment_id"]
    assert found["amount"] == 4200
    assert row(conn, "SELECT order_id FROM discrepancies WHERE kind = 'payment_amount_mismatch'") == {
        "order_id": mismatched
    }
    assert [kind for kind, result in synthetic_results(conn) if result == "ok"] == [
        "payment_succeeded",
        "payment_succeeded",
        "refund_succeeded",
        "refund_succeeded",
    ]

    logged = len(synthetic_results(conn))
    second = settle_now(psp_settings)

    assert second == {**first, "applied": 0, "discrepancies": {}}
    assert len(synthetic_results(conn)) == logged  # nothing fed again
    assert open_kinds(conn) == ["payment_amount_mismatch", "payment_unknown", "refund_failed_after_succeeded"]
    assert_audit_ok(conn)


def test_a_finding_a_person_resolved_is_not_opened_again(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    fake_hyperswitch.payment_we_never_made(fake, 100)
    assert settle_now(psp_settings)["discrepancies"] == {"payment_unknown": 1}
    conn.execute("UPDATE discrepancies SET resolved_at = now(), resolved_by = 'ops', resolution = 'a test'")

    assert settle_now(psp_settings)["discrepancies"] == {}
    assert open_kinds(conn) == []


def test_a_payment_cancelled_after_capture_is_reversed_by_settle(
    conn: psycopg.Connection[Any], settings: Settings, psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    order_id = three_items(conn, settings, fake)
    fake_hyperswitch.cancel_after_capture(fake, payment_of(conn, order_id))

    first = settle_now(psp_settings)

    assert synthetic_results(conn) == [("payment_cancelled_post_capture", "ok")]
    assert first["applied"] == 1 and first["discrepancies"] == {}
    assert order_status(conn, order_id) == "refunded"
    assert settle_now(psp_settings)["applied"] == 0
    assert_audit_ok(conn)


def test_a_post_capture_cancel_of_an_invoice_whose_subscription_was_canceled_is_still_reversed(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, paid_invoice: dict[str, Any]
) -> None:
    """The customer canceled, then the PSP sent the paid invoice's money back and its webhook was
    lost: revenue gives it back, whatever the subscription's status says."""
    invoice = paid_invoice
    subscription_id = row(conn, "SELECT subscription_id FROM subscription_invoices")["subscription_id"]
    commands.cancel(conn, None, subscription_id, now=True)  # nothing pending: no PSP call
    fake_hyperswitch.cancel_after_capture(fake, invoice["payment_id"])

    first = settle_now(psp_settings)

    assert synthetic_results(conn) == [("payment_cancelled_post_capture", "ok")]
    assert first["applied"] == 1 and first["discrepancies"] == {}
    reversal = row(conn, "SELECT amount, status, invoice_id FROM refunds")
    assert reversal == {"amount": 999, "status": "succeeded", "invoice_id": invoice["id"]}
    assert settle_now(psp_settings)["applied"] == 0 and len(synthetic_results(conn)) == 1
    assert_audit_ok(conn)


def test_an_automatic_refund_we_hold_failed_that_the_psp_refunded_is_left_to_a_person_once(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    settings: Settings,
    psp_settings: Settings,
    fake: FakeHyperswitch,
) -> None:
    """Its money sits in suspense and a retry may have given it back as well: nothing is posted,
    one discrepancy says so, whether the webhook or settle finds it first, and no run repeats it."""
    failed = failed_automatic_refund(conn, settings, client, fake)
    suspense = account(conn, ledger.SUSPENSE)
    succeeded = settle_refund(fake, failed["hyperswitch_refund_id"], "succeeded")

    late = process(settings, store_event(conn, "refund_succeeded", dict(succeeded)))
    assert late == "skipped: refund already failed (a discrepancy says so)"
    assert "refund_succeeded_after_failed" in open_kinds(conn)
    deliveries = len(rows(conn, "SELECT 1 FROM hyperswitch_webhook_log"))

    run = settle_now(psp_settings)

    assert run["applied"] == 0 and run["discrepancies"] == {}
    assert len(rows(conn, "SELECT 1 FROM hyperswitch_webhook_log")) == deliveries  # nothing fed again
    assert account(conn, ledger.SUSPENSE) == suspense
    assert row(conn, "SELECT status FROM refunds WHERE id = %s", failed["id"])["status"] == "failed"
    assert_audit_ok(conn)


# -- paging ------------------------------------------------------------------------------------------


def test_more_than_a_page_of_payments_and_of_refunds_is_walked_page_by_page(
    conn: psycopg.Connection[Any], settings: Settings, psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    """130 payments that succeeded while we hold their orders pending, then 120 of them refunded
    in the dashboard: every one is found, across two pages of each list."""
    orders = []
    for _ in range(130):
        payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
        orders.append(make_order(conn, [(SELLER, 250)], payment_id=payment_id))
        fake.payments[payment_id] = {
            "payment_id": payment_id,
            "status": "succeeded",
            "amount": 250,
            "amount_received": 250,
            "currency": "USD",
            "created": fake_hyperswitch.timestamp(),
        }
    for payment_id in list(fake.payments)[:120]:
        refund_from_dashboard(fake, payment_id, 250, "succeeded")

    first = settle_now(psp_settings)

    assert first == {"payments_seen": 130, "refunds_seen": 120, "applied": 250, "discrepancies": {}}
    statuses = [order_status(conn, order_id) for order_id in orders]
    assert statuses == ["refunded"] * 120 + ["completed"] * 10
    payment_pages = fake.calls_to("GET", "/payments/list")
    assert [("starting_after" in call.query) for call in payment_pages] == [False, True]
    assert "created.gte=" in payment_pages[0].query and "limit=100" in payment_pages[0].query
    assert [call.body["offset"] for call in fake.calls_to("POST", "/refunds/list")] == [0, 100]
    assert settle_now(psp_settings)["applied"] == 0
    assert_audit_ok(conn)


# -- the command -------------------------------------------------------------------------------------


def test_the_window_is_read_from_iso_times_and_bad_input_exits_1(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    fake_hyperswitch.payment_we_never_made(fake, 100)

    long_ago = run_cli(
        "settle", "--since", "2020-01-01T00:00:00Z", "--until", "2020-01-02", settings=psp_settings
    )
    assert long_ago.returncode == 0, long_ago.stderr
    assert json.loads(long_ago.stdout) == {
        "payments_seen": 0,
        "refunds_seen": 0,
        "applied": 0,
        "discrepancies": {},
    }
    assert "created.gte=2020-01-01T00%3A00%3A00Z" in fake.calls_to("GET", "/payments/list")[0].query

    recent = run_cli("settle", "--since", "2020-01-01T00:00:00+01:00", settings=psp_settings)
    assert recent.returncode == 0, recent.stderr
    assert json.loads(recent.stdout)["discrepancies"] == {"payment_unknown": 1}

    for args in (
        ["--since", "yesterday"],
        ["--until", "2026-13-01"],
        ["--since", "2026-12-02", "--until", "2026-12-01"],
    ):
        bad = run_cli("settle", *args, settings=psp_settings)
        assert bad.returncode == 1 and bad.stdout == "", (args, bad.stdout)
        assert bad.stderr.startswith("veza-worker settle: --"), bad.stderr
    assert len(fake.calls_to("GET", "/payments/list")) == 2  # a bad window asks the PSP nothing


def test_a_refused_api_key_exits_1_payment_provider_unavailable(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    done = run_cli("-v", "settle", settings=psp_settings, HYPERSWITCH_API_KEY="snd_revoked")

    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "veza-worker settle: payment provider unavailable, will be reconciled"
    )
    assert "HYPERSWITCH_API_KEY" in done.stderr
    assert rows(conn, "SELECT error FROM sweep_runs WHERE name = 'settle'")[0]["error"] is not None


def test_the_sweep_records_its_counts(conn: psycopg.Connection[Any], psp_settings: Settings) -> None:
    done = run_cli("settle", settings=psp_settings)

    assert done.returncode == 0, done.stderr
    [run] = rows(conn, "SELECT counts, error FROM sweep_runs WHERE name = 'settle'")
    assert run == {"counts": json.loads(done.stdout), "error": None}


def test_the_fake_refuses_list_fields_the_server_does_not_know(
    psp: tuple[str, FakeHyperswitch], fake: FakeHyperswitch
) -> None:
    """The spec's parameter list says `created_gte`; the server's constraints say `created.gte`."""
    headers = {"api-key": PSP_API_KEY}
    spec_says = httpx.get(
        f"{psp[0]}/payments/list", params={"created_gte": "2026-12-01T00:00:00Z"}, headers=headers
    )
    too_many = httpx.get(f"{psp[0]}/payments/list", params={"limit": "101"}, headers=headers)
    unknown = httpx.post(
        f"{psp[0]}/refunds/list", json={"start_time": "2026-12-01T00:00:00Z", "page": 2}, headers=headers
    )

    assert [r.status_code for r in (spec_says, too_many, unknown)] == [400, 400, 400]
    assert "unknown field `created_gte`" in spec_says.json()["error"]["message"]
    assert "unknown field `page`" in unknown.json()["error"]["message"]
    fake.violations.clear()  # refused on purpose: not requests of ours
