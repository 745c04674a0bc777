"""Order payments: confirm-order against the fake PSP, and payment webhooks through a real worker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment, webhook_body
from tests.support import (
    join,
    log_rows,
    make_order,
    post_webhook,
    process,
    row,
    rows,
    run_cli,
    store_event,
    wait_for,
)
from veza_worker import automatic_refunds, errors, hyperswitch, orders
from veza_worker.settings import Settings

SELLER_A, SELLER_B = uuid.uuid4(), uuid.uuid4()


def payment(payment_id: str, amount: int, status: str = "succeeded", currency: str = "USD") -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "status": status,
        "amount": amount,
        "amount_received": amount,
        "currency": currency,
    }


def deliver(
    receiver: str,
    broker: dramatiq.Broker,
    conn: psycopg.Connection[Any],
    event_type: str,
    obj: dict[str, Any],
) -> str:
    """POST one signed delivery, wait for the worker, return the row's processing_result."""
    log_id = post_webhook(receiver, webhook_body(event_type, obj)).json()["log_id"]
    join(broker)
    found = row(conn, "SELECT processing_result FROM hyperswitch_webhook_log WHERE id = %s", log_id)
    return str(found["processing_result"])


@pytest.fixture
def paid_order(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, str]:
    """A pending order of three items (two sellers) that reached the PSP."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(conn, [(SELLER_A, 1000), (SELLER_A, 500), (SELLER_B, 3099)], payment_id=payment_id)
    return order_id, payment_id


# -- confirm-order ----------------------------------------------------------------------------------


def test_confirm_order_stores_the_derived_payment_id_and_creates_the_psp_payment(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = make_order(conn, [(SELLER_A, 4599)], currency="EUR")

    out = orders.confirm(conn, client, order_id)

    assert out["payment_id"] == hyperswitch.merchant_id("pay", order_id)
    assert out["status"] == "pending"
    assert out["client_secret"] == fake.payments[out["payment_id"]]["client_secret"]
    order = row(conn, "SELECT status, payment_id FROM orders WHERE id = %s", order_id)
    assert order == {"status": "pending", "payment_id": out["payment_id"]}
    [call] = fake.calls
    assert call.headers["idempotency-key"] == str(order_id)
    assert call.body["amount"] == 4599 and call.body["currency"] == "EUR"
    assert call.body["metadata"] == {"order_id": str(order_id)}


def test_confirm_order_twice_returns_the_same_payment(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = make_order(conn, [(SELLER_A, 100)])
    assert orders.confirm(conn, client, order_id) == orders.confirm(conn, client, order_id)
    assert len(fake.payments) == 1


def test_confirm_order_after_an_ambiguous_failure_keeps_the_payment_id_for_the_retry(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = make_order(conn, [(SELLER_A, 100)])
    fake.fail_next("POST /payments", Failure(status=502))

    with pytest.raises(errors.DomainError, match="payment provider unavailable, will be reconciled"):
        orders.confirm(conn, client, order_id)
    assert row(conn, "SELECT payment_id FROM orders WHERE id = %s", order_id)["payment_id"] is not None
    assert orders.confirm(conn, client, order_id)["client_secret"]


@pytest.mark.parametrize("status", ["completed", "failed", "refunded"])
def test_confirm_order_refuses_an_order_that_is_not_pending(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, status: str
) -> None:
    order_id = make_order(conn, [(SELLER_A, 100)], status=status)
    with pytest.raises(errors.DomainError, match=f"is {status}, not pending"):
        orders.confirm(conn, client, order_id)
    assert fake.calls == []


def test_confirm_order_of_an_unknown_order_is_not_found(
    conn: psycopg.Connection[Any], client: hyperswitch.Client
) -> None:
    with pytest.raises(errors.NotFound):
        orders.confirm(conn, client, uuid.uuid4())


# -- payment webhooks -------------------------------------------------------------------------------


def assert_completed_once(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> None:
    order = row(conn, "SELECT status, completed_at, refund_deadline FROM orders WHERE id = %s", order_id)
    assert order["status"] == "completed"
    assert (order["refund_deadline"] - order["completed_at"]).days == 14
    assert len(rows(conn, "SELECT 1 FROM licenses WHERE order_id = %s AND revoked_at IS NULL", order_id)) == 3
    balances = rows(conn, "SELECT seller_id, currency, balance FROM seller_balances ORDER BY balance")
    assert balances == [
        {"seller_id": SELLER_A, "currency": "USD", "balance": 1500},
        {"seller_id": SELLER_B, "currency": "USD", "balance": 3099},
    ]
    transfers = rows(conn, "SELECT seller_id, amount, status FROM seller_transfers ORDER BY amount")
    assert transfers == [
        {"seller_id": SELLER_A, "amount": 1500, "status": "pending"},
        {"seller_id": SELLER_B, "amount": 3099, "status": "pending"},
    ]


@pytest.mark.usefixtures("worker")
def test_payment_succeeded_completes_the_order_once_with_licenses_credits_and_transfers(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    paid_order: tuple[uuid.UUID, str],
) -> None:
    order_id, payment_id = paid_order

    assert deliver(receiver, broker, conn, "payment_succeeded", payment(payment_id, 4599)) == "ok"
    for _ in range(3):  # three more deliveries, each a distinct event
        assert deliver(receiver, broker, conn, "payment_succeeded", payment(payment_id, 4599)) == (
            "skipped: order already completed"
        )
    assert deliver(receiver, broker, conn, "payment_failed", payment(payment_id, 4599, "failed")) == (
        "skipped: order already completed"
    )

    assert_completed_once(conn, order_id)


def test_two_workers_applying_the_same_success_at_once_complete_the_order_once(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
    paid_order: tuple[uuid.UUID, str],
) -> None:
    order_id, payment_id = paid_order
    worker.pause()
    for _ in range(4):
        post_webhook(receiver, webhook_body("payment_succeeded", payment(payment_id, 4599)))
    worker.resume()
    join(broker)

    assert sorted(r["processing_result"] for r in log_rows(conn)) == [
        "ok",
        *["skipped: order already completed"] * 3,
    ]
    assert_completed_once(conn, order_id)


@pytest.mark.parametrize(
    "paid",
    [
        payment("", 4500),
        payment("", 4599, currency="EUR"),
        {**payment("", 4599), "amount": "4599"},
    ],
    ids=["underpaid", "other-currency", "amount-as-string"],
)
def test_a_success_for_another_amount_grants_nothing(
    conn: psycopg.Connection[Any],
    settings: Settings,
    paid_order: tuple[uuid.UUID, str],
    caplog: pytest.LogCaptureFixture,
    paid: dict[str, Any],
) -> None:
    order_id, payment_id = paid_order
    log_id = store_event(conn, "payment_succeeded", {**paid, "payment_id": payment_id})

    assert process(settings, log_id) == "error: amount mismatch"

    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "pending"
    assert rows(conn, "SELECT 1 FROM licenses") == [] and rows(conn, "SELECT 1 FROM seller_balances") == []
    assert [r.levelname for r in caplog.records if str(order_id) in r.getMessage()] == ["ERROR"]


@pytest.mark.parametrize("event_type", ["payment_failed", "payment_cancelled"])
def test_a_failed_or_cancelled_payment_fails_the_order(
    conn: psycopg.Connection[Any], settings: Settings, paid_order: tuple[uuid.UUID, str], event_type: str
) -> None:
    order_id, payment_id = paid_order

    assert process(settings, store_event(conn, event_type, payment(payment_id, 4599, "failed"))) == "ok"

    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"
    assert rows(conn, "SELECT 1 FROM licenses") == []


def test_a_success_after_the_order_failed_is_refunded_automatically_once(
    conn: psycopg.Connection[Any],
    settings: Settings,
    paid_order: tuple[uuid.UUID, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    order_id, payment_id = paid_order
    process(settings, store_event(conn, "payment_failed", payment(payment_id, 4599, "failed")))
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"

    results = [
        process(settings, store_event(conn, "payment_succeeded", payment(payment_id, 4599))) for _ in range(4)
    ]

    assert results == ["ok", *["skipped: order already refunded automatically"] * 3]
    refund = row(conn, "SELECT * FROM refunds")
    assert (refund["order_id"], refund["amount"], refund["status"], refund["automatic"]) == (
        order_id,
        4599,
        "pending",
        True,
    )
    assert refund["requested_by"] is None and refund["note"] == "automatic: payment for a failed order"
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"
    assert rows(conn, "SELECT 1 FROM licenses") == [] and rows(conn, "SELECT 1 FROM seller_balances") == []
    assert any(
        r.levelname == "WARNING" and "refunding it automatically" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("event_type", "paid"),
    [
        ("payment_succeeded", {"status": "succeeded", "amount_received": 1000}),
        ("payment_captured", {"status": "partially_captured", "amount_received": 1000}),
        ("payment_succeeded", {"status": "partially_captured", "amount_received": 1000}),
    ],
    ids=["succeeded-short", "captured-partially", "succeeded-event-partial-object"],
)
def test_a_partial_capture_fails_the_order_and_refunds_what_was_captured(
    conn: psycopg.Connection[Any],
    settings: Settings,
    paid_order: tuple[uuid.UUID, str],
    event_type: str,
    paid: dict[str, Any],
) -> None:
    order_id, payment_id = paid_order
    obj = {**payment(payment_id, 4599), **paid}

    assert process(settings, store_event(conn, event_type, obj)) == "ok"
    assert (
        process(settings, store_event(conn, event_type, obj))
        == "skipped: order already refunded automatically"
    )

    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"
    refund = row(conn, "SELECT amount, automatic, note FROM refunds")
    assert refund == {"amount": 1000, "automatic": True, "note": "automatic: partial capture of the order"}
    assert rows(conn, "SELECT 1 FROM licenses") == [] and rows(conn, "SELECT 1 FROM seller_balances") == []


def test_an_automatic_refund_is_sent_by_the_outbox_and_its_success_moves_nothing_else(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 4599)])
    payment_id = orders.confirm(conn, client, order_id)["payment_id"]
    process(settings, store_event(conn, "payment_failed", payment(payment_id, 4599, "failed")))
    late = settle_payment(fake, payment_id, "succeeded")
    process(settings, store_event(conn, "payment_succeeded", late))

    assert automatic_refunds.send_unsent(conn, client) == {"sent": 1, "rejected": 0, "ambiguous": 0}
    assert automatic_refunds.send_unsent(conn, client) == {"sent": 0, "rejected": 0, "ambiguous": 0}

    refund = row(conn, "SELECT * FROM refunds")
    [posted] = fake.calls_to("POST", "/refunds")
    assert posted.body["amount"] == 4599 and posted.body["refund_id"] == refund["hyperswitch_refund_id"]
    psp_refund = {**fake.refunds[refund["hyperswitch_refund_id"]], "status": "succeeded"}
    assert process(settings, store_event(conn, "refund_succeeded", psp_refund)) == "ok"
    assert row(conn, "SELECT status FROM refunds")["status"] == "succeeded"
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "failed"


def test_non_terminal_payment_events_are_skipped(
    conn: psycopg.Connection[Any], settings: Settings, paid_order: tuple[uuid.UUID, str]
) -> None:
    order_id, payment_id = paid_order
    for event_type in ("payment_processing", "action_required"):
        log_id = store_event(conn, event_type, payment(payment_id, 4599, "processing"))
        assert process(settings, log_id) == "skipped: informational"
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "pending"


def test_a_payment_event_without_a_payment_id_is_an_error(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    log_id = store_event(conn, "payment_succeeded", {"status": "succeeded", "amount": 1})
    assert process(settings, log_id) == "error: missing payment_id"


@pytest.mark.usefixtures("worker")
def test_an_unknown_payment_is_retried_until_our_order_commits(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
) -> None:
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    post_webhook(receiver, webhook_body("payment_succeeded", payment(payment_id, 4599)))
    wait_for(lambda: log_rows(conn)[0]["attempts"] > 0)  # the first try found no order
    assert log_rows(conn)[0]["processing_result"] == "queued"
    order_id = make_order(conn, [(SELLER_A, 1000), (SELLER_A, 500), (SELLER_B, 3099)], payment_id=payment_id)

    join(broker)

    [log_row] = log_rows(conn)
    assert log_row["processing_result"] == "ok" and log_row["attempts"] >= 1
    assert_completed_once(conn, order_id)


def test_an_unknown_payment_ends_skipped_after_ten_minutes(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    unknown = hyperswitch.merchant_id("pay", uuid.uuid4())
    log_id = store_event(conn, "payment_succeeded", payment(unknown, 100))

    with pytest.raises(errors.UnknownObject):  # young: Dramatiq retries it
        process(settings, log_id, final_attempt=False)
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '11 minutes'")

    assert process(settings, log_id, final_attempt=False) == "skipped: unknown payment"


def test_the_confirm_order_command_prints_json_and_logs_no_secret_even_verbose(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    order_id = make_order(conn, [(SELLER_A, 250)])

    quiet = run_cli("confirm-order", str(order_id), settings=psp_settings)
    verbose = run_cli("-v", "confirm-order", str(order_id), settings=psp_settings)

    assert quiet.returncode == verbose.returncode == 0 and quiet.stderr == ""
    out = json.loads(quiet.stdout)
    secret = fake.payments[out["payment_id"]]["client_secret"]
    assert out == {
        "order_id": str(order_id),
        "payment_id": hyperswitch.merchant_id("pay", order_id),
        "client_secret": secret,
        "status": "pending",
        "psp_status": "requires_payment_method",
    }
    assert json.loads(verbose.stdout) == out
    assert "payment" in verbose.stderr  # it did log
    assert secret not in verbose.stderr and str(psp_settings.hyperswitch_api_key) not in verbose.stderr
