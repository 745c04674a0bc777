"""Subscriptions: the five create outcomes, payment webhooks, recovery, the gate and trial end."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.factories import OwnConnections, make_plan
from tests.fake_hyperswitch import Failure, FakeHyperswitch, webhook_body
from tests.support import at_once, join, log_rows, post_webhook, process, row, rows, run_cli, store_event
from veza_worker import errors, hyperswitch
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands, gate

USER = uuid.uuid4()


@pytest.fixture
def free(conn: psycopg.Connection[Any]) -> uuid.UUID:
    return make_plan(conn, 0)


@pytest.fixture
def with_trial(conn: psycopg.Connection[Any]) -> uuid.UUID:
    return make_plan(conn, 9900, interval="year", trial_days=7)


def the_subscription(conn: psycopg.Connection[Any], user: uuid.UUID = USER) -> dict[str, Any]:
    return row(conn, "SELECT * FROM user_subscriptions WHERE user_id = %s AND status <> 'expired'", user)


def invoices(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return rows(conn, "SELECT * FROM subscription_invoices ORDER BY created_at")


# -- the five create outcomes -----------------------------------------------------------------------


def test_a_free_plan_is_active_at_once_without_the_psp(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, free: uuid.UUID
) -> None:
    out = commands.subscribe(conn, client, USER, free)

    subscription = the_subscription(conn)
    assert out == {"subscription_id": str(subscription["id"]), "status": "active"}
    assert subscription["current_period_start"] is not None
    assert invoices(conn) == [] and fake.calls == []


def test_a_paid_plan_waits_for_payment_with_an_invoice_and_a_psp_payment(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    out = commands.subscribe(conn, client, USER, monthly)

    subscription = the_subscription(conn)
    [invoice] = invoices(conn)
    assert subscription["status"] == "pending_payment"
    assert invoice["status"] == "pending" and invoice["amount"] == 999 and invoice["currency"] == "EUR"
    assert invoice["payment_id"] == hyperswitch.merchant_id("pay", invoice["id"])
    assert invoice["client_secret"] == fake.payments[invoice["payment_id"]]["client_secret"]
    assert out == {
        "subscription_id": str(subscription["id"]),
        "status": "pending_payment",
        "client_secret": invoice["client_secret"],
        "payment_id": invoice["payment_id"],
    }
    [call] = fake.calls
    assert call.headers["idempotency-key"] == str(subscription["id"])
    assert call.body["amount"] == 999 and call.body["payment_id"] == invoice["payment_id"]


def test_a_paid_plan_without_a_provider_is_refused_and_writes_nothing(
    conn: psycopg.Connection[Any], monthly: uuid.UUID
) -> None:
    with pytest.raises(errors.PaymentProviderNotConfigured) as raised:
        commands.subscribe(conn, None, USER, monthly)

    assert str(raised.value) == "payment provider not configured — paid plans temporarily unavailable"
    assert rows(conn, "SELECT 1 FROM user_subscriptions") == [] and invoices(conn) == []


def test_a_first_trial_needs_no_psp_and_a_second_trial_is_not_given(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    with_trial: uuid.UUID,
    monthly: uuid.UUID,
) -> None:
    first = commands.subscribe(conn, client, USER, with_trial)

    trial = the_subscription(conn)
    assert first["status"] == "trialing" and fake.calls == [] and invoices(conn) == []
    assert timedelta(days=6, hours=23) < trial["trial_ends_at"] - trial["created_at"] <= timedelta(days=7)

    conn.execute("UPDATE user_subscriptions SET status = 'expired'")  # the trial lapsed unpaid
    second = commands.subscribe(conn, client, USER, with_trial)

    assert second["status"] == "pending_payment" and second["client_secret"]
    assert the_subscription(conn)["trial_ends_at"] is None
    assert len(fake.calls) == 1 and len(invoices(conn)) == 1
    assert fake.calls[0].headers["idempotency-key"] == second["subscription_id"]


def test_subscribing_again_while_pending_returns_the_same_payment_without_a_second_charge(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    first = commands.subscribe(conn, client, USER, monthly)
    again = commands.subscribe(conn, client, USER, monthly)

    assert again == first
    assert len(fake.calls) == 1 and len(invoices(conn)) == 1


def test_subscribing_to_another_plan_while_pending_names_the_pending_subscription(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, monthly: uuid.UUID, with_trial: uuid.UUID
) -> None:
    pending = commands.subscribe(conn, client, USER, monthly)
    with pytest.raises(
        errors.DomainError, match=f"{pending['subscription_id']} awaiting payment for another plan"
    ):
        commands.subscribe(conn, client, USER, with_trial)


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_a_user_with_a_live_subscription_cannot_subscribe_again(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    free: uuid.UUID,
    monthly: uuid.UUID,
    status: str,
) -> None:
    commands.subscribe(conn, client, USER, free)
    conn.execute("UPDATE user_subscriptions SET status = %s", [status])
    with pytest.raises(errors.DomainError, match=f"already has subscription .*, which is {status}$"):
        commands.subscribe(conn, client, USER, monthly)


def test_an_unknown_plan_is_not_found(conn: psycopg.Connection[Any], client: hyperswitch.Client) -> None:
    with pytest.raises(errors.NotFound):
        commands.subscribe(conn, client, USER, uuid.uuid4())


def test_a_psp_rejection_fails_the_invoice_and_expires_the_subscription(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    fake.fail_next("POST /payments", Failure(status=400, code="IR_07", message="Currency not supported"))

    with pytest.raises(
        errors.PaymentRejected, match="payment rejected by payment provider: Currency not supported"
    ):
        commands.subscribe(conn, client, USER, monthly)

    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "expired"
    assert [i["status"] for i in invoices(conn)] == ["failed"]
    assert commands.subscribe(conn, client, USER, monthly)["status"] == "pending_payment"  # may retry


def test_after_an_ambiguous_create_subscribe_again_recovers_the_same_payment(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    fake.fail_next("POST /payments", Failure(status=502, acted=True))  # the PSP created it; we saw a 502

    with pytest.raises(errors.PaymentProviderUnavailable, match="will be reconciled"):
        commands.subscribe(conn, client, USER, monthly)
    assert the_subscription(conn)["status"] == "pending_payment"
    assert invoices(conn)[0]["client_secret"] is None

    out = commands.subscribe(conn, client, USER, monthly)

    [payment_id] = fake.payments
    assert (
        out["payment_id"] == payment_id and out["client_secret"] == fake.payments[payment_id]["client_secret"]
    )
    assert invoices(conn)[0]["client_secret"] == out["client_secret"]
    assert [(c.method, c.path) for c in fake.calls] == [
        ("POST", "/payments"),
        ("POST", "/payments"),
        ("GET", f"/payments/{payment_id}"),
    ]


def test_two_subscribes_at_once_create_one_subscription_and_one_charge(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, monthly: uuid.UUID, own_connections: OwnConnections
) -> None:
    outcomes: list[Any] = []

    def subscribe() -> None:
        with own_connections() as (own, own_client):
            outcomes.append(commands.subscribe(own, own_client, USER, monthly))

    at_once(*[subscribe] * 4)

    assert len({json.dumps(o, sort_keys=True) for o in outcomes}) == 1 and len(outcomes) == 4
    assert len(rows(conn, "SELECT 1 FROM user_subscriptions")) == 1 and len(fake.payments) == 1


# -- payment webhooks -------------------------------------------------------------------------------


@pytest.fixture
def pending(conn: psycopg.Connection[Any], client: hyperswitch.Client, monthly: uuid.UUID) -> dict[str, Any]:
    return commands.subscribe(conn, client, USER, monthly)


def paid(pending: dict[str, Any], status: str = "succeeded", amount: int = 999) -> dict[str, Any]:
    return {"payment_id": pending["payment_id"], "status": status, "amount": amount, "currency": "EUR"}


def test_payment_succeeded_activates_for_one_interval_and_replays_change_nothing(
    conn: psycopg.Connection[Any], settings: Settings, pending: dict[str, Any]
) -> None:
    assert process(settings, store_event(conn, "payment_succeeded", paid(pending))) == "ok"

    subscription = the_subscription(conn)
    assert subscription["status"] == "active"
    period = subscription["current_period_end"] - subscription["current_period_start"]
    assert timedelta(days=28) <= period <= timedelta(days=31)
    [invoice] = invoices(conn)
    assert invoice["status"] == "paid" and invoice["paid_at"] is not None

    for event_type, status in [("payment_succeeded", "succeeded")] * 3 + [("payment_failed", "failed")]:
        result = process(settings, store_event(conn, event_type, paid(pending, status)))
        assert result == "skipped: invoice already paid"
    assert the_subscription(conn)["current_period_end"] == subscription["current_period_end"]
    assert invoices(conn)[0]["paid_at"] == invoice["paid_at"]


def test_a_yearly_plan_gets_a_year(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client
) -> None:
    yearly = make_plan(conn, 9900, interval="year")
    pending = commands.subscribe(conn, client, USER, yearly)

    process(settings, store_event(conn, "payment_succeeded", paid(pending, amount=9900)))

    subscription = the_subscription(conn)
    assert subscription["current_period_end"].year == subscription["current_period_start"].year + 1


@pytest.mark.parametrize("event_type", ["payment_failed", "payment_cancelled"])
def test_a_failed_payment_expires_the_subscription_and_a_late_success_is_refunded(
    conn: psycopg.Connection[Any],
    settings: Settings,
    pending: dict[str, Any],
    event_type: str,
) -> None:
    assert process(settings, store_event(conn, event_type, paid(pending, "failed"))) == "ok"
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "expired"
    assert invoices(conn)[0]["status"] == "failed"

    late = process(settings, store_event(conn, "payment_succeeded", paid(pending)))
    replayed = process(settings, store_event(conn, "payment_succeeded", paid(pending)))

    assert (late, replayed) == ("ok", "skipped: invoice already refunded")
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "expired"
    refund = row(conn, "SELECT * FROM refunds")
    assert refund["invoice_id"] == invoices(conn)[0]["id"] and refund["order_id"] is None
    assert (refund["amount"], refund["currency"], refund["status"]) == (999, "EUR", "pending")
    assert refund["requested_by"] is None and refund["note"].startswith("automatic:")


def test_an_underpaid_invoice_grants_nothing(
    conn: psycopg.Connection[Any], settings: Settings, pending: dict[str, Any]
) -> None:
    result = process(settings, store_event(conn, "payment_succeeded", paid(pending, amount=1)))
    assert result == "error: amount mismatch"
    assert the_subscription(conn)["status"] == "pending_payment"


def test_concurrent_successes_through_real_workers_activate_once(
    receiver: str,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
    pending: dict[str, Any],
) -> None:
    worker.pause()
    for _ in range(4):
        post_webhook(receiver, webhook_body("payment_succeeded", paid(pending)))
    worker.resume()
    join(broker)

    results = sorted(r["processing_result"] for r in log_rows(conn))
    assert results == ["ok", *["skipped: invoice already paid"] * 3]
    assert the_subscription(conn)["status"] == "active"


# -- complete-subscription --------------------------------------------------------------------------


def test_complete_subscription_returns_the_existing_client_secret(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, pending: dict[str, Any]
) -> None:
    out = commands.complete(conn, client, uuid.UUID(pending["subscription_id"]))
    assert out == pending
    assert len(fake.calls) == 1  # only the subscribe's create


def test_complete_subscription_creates_the_payment_the_first_try_lost(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    fake.fail_next("POST /payments", Failure(status=504))
    with pytest.raises(errors.PaymentProviderUnavailable) as raised:
        commands.subscribe(conn, client, USER, monthly)
    assert raised.value.output is not None and raised.value.output["client_secret"] is None

    out = commands.complete(conn, client, the_subscription(conn)["id"])

    assert out["client_secret"] == invoices(conn)[0]["client_secret"] is not None
    assert len(fake.payments) == 1


@pytest.mark.parametrize("status", ["active", "trialing", "expired", "canceled"])
def test_complete_subscription_of_another_status_is_refused(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, pending: dict[str, Any], status: str
) -> None:
    conn.execute("UPDATE user_subscriptions SET status = %s", [status])
    with pytest.raises(errors.DomainError, match=f"is {status}, not pending_payment"):
        commands.complete(conn, client, uuid.UUID(pending["subscription_id"]))


# -- the feature gate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "allowed", "reason"),
    [
        ("active", True, None),
        ("trialing", True, None),
        ("pending_payment", False, "complete payment"),
        ("expired", False, "subscription expired"),
        ("canceled", False, "subscription canceled"),
    ],
)
def test_the_gate_grants_only_active_and_trialing(
    conn: psycopg.Connection[Any], free: uuid.UUID, status: str, allowed: bool, reason: str | None
) -> None:
    commands.subscribe(conn, None, USER, free)
    conn.execute(
        "UPDATE user_subscriptions SET status = %s, trial_ends_at = now() + interval '1 day'", [status]
    )

    view = gate.status(conn, USER)

    assert view["allowed"] is allowed and view["status"] == status
    assert view.get("reason") == reason


def test_the_gate_prefers_the_live_subscription_and_knows_users_without_one(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, free: uuid.UUID, monthly: uuid.UUID
) -> None:
    assert gate.status(conn, USER) == {
        "user_id": str(USER),
        "allowed": False,
        "reason": "no subscription",
        "status": None,
    }
    commands.subscribe(conn, client, USER, monthly)
    conn.execute("UPDATE user_subscriptions SET status = 'expired', created_at = now() + interval '1 hour'")
    commands.subscribe(conn, client, USER, free)
    assert gate.status(conn, USER)["status"] == "active"


# -- trial end --------------------------------------------------------------------------------------


def start_trials(
    conn: psycopg.Connection[Any], plan_id: uuid.UUID, count: int, *, ended: bool = True
) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]
    for user in users:
        commands.subscribe(conn, None, user, plan_id)
    if ended:
        conn.execute(
            "UPDATE user_subscriptions SET trial_ends_at = now() - interval '1 minute'"
            " WHERE user_id = ANY(%s)",
            [users],
        )
    return users


def test_trial_end_moves_ended_trials_in_batches_and_charges_each_once(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, with_trial: uuid.UUID
) -> None:
    ended = start_trials(conn, with_trial, 7)
    running = start_trials(conn, with_trial, 1, ended=False)

    counts = billing.end_trials(conn, client, batch_size=3)

    assert counts == {
        "ended": 7,
        "charged": 7,
        "free": 0,
        "rejected": 0,
        "ambiguous": 0,
        "no_provider": 0,
        "canceled": 0,
    }
    for user in ended:
        subscription = the_subscription(conn, user)
        assert subscription["status"] == "pending_payment"
        [invoice] = rows(
            conn, "SELECT * FROM subscription_invoices WHERE subscription_id = %s", subscription["id"]
        )
        assert invoice["client_secret"] == fake.payments[invoice["payment_id"]]["client_secret"]
        [call] = [c for c in fake.calls if c.body and c.body.get("payment_id") == invoice["payment_id"]]
        assert call.headers["idempotency-key"] == str(subscription["id"])
    assert the_subscription(conn, running[0])["status"] == "trialing"
    assert billing.end_trials(conn, client) == {key: 0 for key in counts}


def test_two_trial_end_sweeps_at_once_never_invoice_twice(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    with_trial: uuid.UUID,
    own_connections: OwnConnections,
) -> None:
    start_trials(conn, with_trial, 12)
    totals: list[dict[str, int]] = []

    def sweep() -> None:
        with own_connections() as (own, own_client):
            totals.append(billing.end_trials(own, own_client, batch_size=2))

    at_once(*[sweep] * 3)

    assert sum(t["ended"] for t in totals) == 12
    assert len(invoices(conn)) == 12 and len(fake.payments) == 12
    assert len(fake.calls_to("POST", "/payments")) == 12


def test_trial_end_without_a_provider_still_stops_access_and_the_invoice_waits(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, with_trial: uuid.UUID
) -> None:
    [user] = start_trials(conn, with_trial, 1)

    assert billing.end_trials(conn, None)["no_provider"] == 1
    assert gate.status(conn, user)["allowed"] is False
    subscription_id = the_subscription(conn, user)["id"]
    assert commands.complete(conn, client, subscription_id)["client_secret"]


# -- the CLI ----------------------------------------------------------------------------------------


def test_the_subscription_commands(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch, monthly: uuid.UUID
) -> None:
    subscribed = run_cli("subscribe", str(USER), str(monthly), settings=psp_settings)
    assert subscribed.returncode == 0, subscribed.stderr
    out = json.loads(subscribed.stdout)
    assert out["status"] == "pending_payment" and out["client_secret"]

    completed = run_cli("complete-subscription", out["subscription_id"], settings=psp_settings)
    assert json.loads(completed.stdout) == out

    gate = json.loads(run_cli("subscription-status", str(USER), settings=psp_settings).stdout)
    assert gate["allowed"] is False and gate["reason"] == "complete payment"

    swept = run_cli("trial-end", settings=psp_settings)
    assert json.loads(swept.stdout)["ended"] == 0

    refused = run_cli(
        "subscribe", str(uuid.uuid4()), str(monthly), settings=psp_settings, HYPERSWITCH_ENABLED="false"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "veza-worker subscribe: payment provider not configured — paid plans temporarily unavailable"
    )
