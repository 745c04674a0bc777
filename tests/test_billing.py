"""The subscription lifecycle after the first payment: renewal, dunning, recovery, cancel, the gate.

Time is moved by SQL (every timestamp of a subscription and its invoices shifted back), never
slept; the PSP is the fake Hyperswitch on a real uvicorn, its requests checked against the spec.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.factories import DAY, OwnConnections, Tick, make_plan, paid_up, to_period_end, travel
from tests.fake_hyperswitch import Failure, FakeHyperswitch, revoke_mandate, settle_payment
from tests.support import PSP_API_KEY, at_once, join, log_rows, process, row, rows, run_cli, store_event
from veza_worker import automatic_refunds, errors, hyperswitch
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands
from veza_worker.subscriptions import gate as feature_gate  # `gate` is this file's fixture


@pytest.fixture
def subscription_id(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    monthly: uuid.UUID,
) -> uuid.UUID:
    """A paid-up monthly subscription (`paid_up`)."""
    return paid_up(conn, client, fake, settings, monthly)


@pytest.fixture
def due(conn: psycopg.Connection[Any], subscription_id: uuid.UUID) -> uuid.UUID:
    """The paid-up subscription, just past its period's end: its renewal is due."""
    to_period_end(conn, subscription_id)
    return subscription_id


@pytest.fixture
def renewals_due(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    monthly: uuid.UUID,
) -> Callable[[int], list[uuid.UUID]]:
    """`renewals_due(n)`: n paid-up monthly subscriptions, each just past its period's end."""

    def make(count: int) -> list[uuid.UUID]:
        due = [paid_up(conn, client, fake, settings, monthly) for _ in range(count)]
        for subscription_id in due:
            to_period_end(conn, subscription_id)
        return due

    return make


def renewed_on_session(
    conn: psycopg.Connection[Any], subscription_id: uuid.UUID, renew: Renew
) -> dict[str, Any]:
    """Its saved method forgotten, its period over, one renew sweep: past due, the renewal invoice
    waiting for the customer on-session. That invoice."""
    conn.execute("UPDATE user_subscriptions SET payment_method_id = NULL")
    to_period_end(conn, subscription_id)
    renew()
    return invoices_of(conn, subscription_id)[-1]


def sub(conn: psycopg.Connection[Any], subscription_id: uuid.UUID) -> dict[str, Any]:
    return row(conn, "SELECT * FROM user_subscriptions WHERE id = %s", subscription_id)


def invoices_of(conn: psycopg.Connection[Any], subscription_id: uuid.UUID) -> list[dict[str, Any]]:
    return rows(
        conn,
        "SELECT * FROM subscription_invoices WHERE subscription_id = %s ORDER BY created_at, attempt",
        subscription_id,
    )


Gate = Callable[[uuid.UUID], dict[str, Any]]


@pytest.fixture
def gate(conn: psycopg.Connection[Any], settings: Settings) -> Gate:
    """What the gate answers for a subscription's user."""

    def status(subscription_id: uuid.UUID) -> dict[str, Any]:
        return feature_gate.status(conn, sub(conn, subscription_id)["user_id"], settings.subscription_grace)

    return status


def charges(fake: FakeHyperswitch) -> list[Any]:
    return fake.calls_to("POST", "/payments")


Renew = Callable[[], dict[str, int]]


@pytest.fixture
def renew(conn: psycopg.Connection[Any], client: hyperswitch.Client, settings: Settings) -> Renew:
    """One renew sweep, as the clock runs it; its counts."""
    return functools.partial(billing.renew, conn, client, settings)


# -- the saved payment method -----------------------------------------------------------------------


def test_a_first_payment_names_the_customer_asks_to_save_the_card_and_the_method_is_stored(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    monthly: uuid.UUID,
) -> None:
    user = uuid.uuid4()
    subscription_id = paid_up(conn, client, fake, settings, monthly, user)

    [call] = charges(fake)
    assert call.body["customer"] == {"id": hyperswitch.merchant_id("cus", user)}
    assert call.body["setup_future_usage"] == "off_session" and "confirm" not in call.body
    method = sub(conn, subscription_id)["payment_method_id"]
    assert method is not None and fake.payment_methods[method] == hyperswitch.merchant_id("cus", user)


def test_mandate_revoked_forgets_the_method_and_the_next_renewal_is_on_session(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    subscription_id: uuid.UUID,
    renew: Renew,
) -> None:
    method = sub(conn, subscription_id)["payment_method_id"]
    revoked = store_event(conn, "mandate_revoked", revoke_mandate(fake, method))

    assert process(settings, revoked) == "ok"
    assert process(settings, store_event(conn, "mandate_revoked", {"payment_method_id": method})) == (
        "skipped: unknown payment method"
    )
    assert sub(conn, subscription_id)["payment_method_id"] is None

    to_period_end(conn, subscription_id)
    assert renew()["on_session"] == 1
    assert sub(conn, subscription_id)["status"] == "past_due"
    call = charges(fake)[-1]
    assert "recurring_details" not in call.body and call.body["setup_future_usage"] == "off_session"


def test_the_mandate_sample_is_handled(conn: psycopg.Connection[Any], settings: Settings) -> None:
    from tests.support import SAMPLES, store

    body = (SAMPLES / "mandate_revoked.json").read_bytes()
    assert process(settings, store(conn, body)) == "skipped: unknown payment method"


# -- renewal ----------------------------------------------------------------------------------------


def test_three_periods_each_charged_once_contiguous_and_the_gate_follows_the_money(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    subscription_id: uuid.UUID,
    renew: Renew,
    gate: Gate,
) -> None:
    first = sub(conn, subscription_id)
    assert gate(subscription_id)["allowed"] is True

    for _period in range(3):
        to_period_end(conn, subscription_id)
        moved = sub(conn, subscription_id)

        counts = renew()
        assert counts["invoiced"] == 1 and counts["paid"] == 1, counts
        assert renew()["invoiced"] == 0  # a second sweep finds nothing due

        after = sub(conn, subscription_id)
        assert after["status"] == "active"
        assert after["current_period_start"] == moved["current_period_end"]  # no drift
        assert (
            timedelta(days=28)
            <= after["current_period_end"] - after["current_period_start"]
            <= timedelta(days=31)
        )
        assert gate(subscription_id)["allowed"] is True
        invoice = invoices_of(conn, subscription_id)[-1]
        assert (invoice["status"], invoice["off_session"], invoice["attempt"]) == ("paid", True, 1)
        assert (invoice["period_start"], invoice["period_end"]) == (
            after["current_period_start"],
            after["current_period_end"],
        )
        call = charges(fake)[-1]
        assert call.headers["idempotency-key"] == str(invoice["id"])
        assert call.body["recurring_details"] == {
            "type": "payment_method_id",
            "data": first["payment_method_id"],
        }
        assert call.body["confirm"] is True and call.body["off_session"] is True
        assert "setup_future_usage" not in call.body

    assert len(charges(fake)) == 1 + 3  # the first payment and one per renewal
    # The clock stops: inside the grace the paid plan still grants, past it it does not.
    to_period_end(conn, subscription_id, past=settings.subscription_grace - timedelta(hours=1))
    assert gate(subscription_id)["allowed"] is True
    travel(conn, subscription_id, timedelta(hours=2))
    view = gate(subscription_id)
    assert (view["allowed"], view["reason"]) == (False, "renewal payment pending")


def test_a_free_plan_never_renews_and_always_grants(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    renew: Renew,
    gate: Gate,
) -> None:
    free = make_plan(conn, 0)
    out = commands.subscribe(conn, client, uuid.uuid4(), free)
    subscription_id = uuid.UUID(out["subscription_id"])
    travel(conn, subscription_id, 400 * DAY)

    assert renew()["invoiced"] == 0
    assert gate(subscription_id)["allowed"] is True and fake.calls == []


def test_the_gate_refuses_an_active_paid_plan_without_a_paid_invoice_and_an_ended_trial(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    monthly: uuid.UUID,
    gate: Gate,
) -> None:
    out = commands.subscribe(conn, client, uuid.uuid4(), monthly)
    subscription_id = uuid.UUID(out["subscription_id"])
    conn.execute(  # someone set it active by hand, no payment behind it
        "UPDATE user_subscriptions SET status = 'active', current_period_end = now() + interval '1 month'"
    )
    assert gate(subscription_id)["reason"] == "no paid invoice"
    conn.execute("UPDATE user_subscriptions SET status = 'trialing', trial_ends_at = now() - interval '1 s'")
    assert gate(subscription_id)["reason"] == "trial ended"


# -- failure, dunning, recovery ---------------------------------------------------------------------


def test_a_failed_renewal_is_past_due_and_dunning_recovers_on_step_two_for_the_owed_period(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    due: uuid.UUID,
    renew: Renew,
    gate: Gate,
) -> None:
    owed_from = sub(conn, due)["current_period_end"]
    fake.off_session_outcomes = ["failed", "failed"]

    assert renew()["failed"] == 1
    past_due = sub(conn, due)
    assert past_due["status"] == "past_due" and past_due["past_due_since"] is not None
    assert gate(due)["allowed"] is False
    assert renew()["retried"] == 0  # step 1 is a day away

    travel(conn, due, DAY)
    assert renew()["retried"] == 1  # step 1: fails again
    assert sub(conn, due)["status"] == "past_due"
    travel(conn, due, DAY)
    assert renew()["retried"] == 0  # step 2 is at 3 days
    travel(conn, due, DAY)
    assert renew()["retried"] == 1  # step 2: paid

    recovered = sub(conn, due)
    attempts = invoices_of(conn, due)[1:]
    assert [(i["attempt"], i["status"]) for i in attempts] == [(1, "failed"), (2, "failed"), (3, "paid")]
    assert {i["period_start"] for i in attempts} == {recovered["current_period_start"]}
    assert recovered["status"] == "active" and recovered["past_due_since"] is None
    assert recovered["current_period_start"] == owed_from - 3 * DAY  # the owed period, as time moved
    assert gate(due)["allowed"] is True
    assert len({c.body["payment_id"] for c in charges(fake)}) == len(charges(fake)) == 4


def test_dunning_exhausted_expires_the_subscription(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    due: uuid.UUID,
    renew: Renew,
    gate: Gate,
) -> None:
    fake.off_session_outcomes = ["failed"] * 4

    renew()
    for step in range(3):
        travel(conn, due, 2 * DAY)
        counts = renew()
        assert counts["retried"] == 1, (step, counts)
    assert sub(conn, due)["status"] == "past_due"
    assert renew()["expired"] == 1  # the last step's attempt failed

    assert sub(conn, due)["status"] == "expired"
    assert [i["attempt"] for i in invoices_of(conn, due)[1:]] == [1, 2, 3, 4]
    assert gate(due)["reason"] == "subscription expired"


def test_without_a_saved_method_the_renewal_is_on_session_and_complete_subscription_recovers_it(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    subscription_id: uuid.UUID,
    renew: Renew,
) -> None:
    conn.execute("UPDATE user_subscriptions SET payment_method_id = NULL")
    to_period_end(conn, subscription_id)

    assert renew()["on_session"] == 1
    assert sub(conn, subscription_id)["status"] == "past_due"
    [_, renewal] = invoices_of(conn, subscription_id)
    out = commands.complete(conn, client, subscription_id)
    assert out == {
        "subscription_id": str(subscription_id),
        "status": "past_due",
        "client_secret": renewal["client_secret"],
        "payment_id": renewal["payment_id"],
    }
    call = charges(fake)[-1]
    assert call.headers["idempotency-key"] == str(renewal["id"]) and "confirm" not in call.body

    payment = settle_payment(fake, renewal["payment_id"], "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", payment)) == "ok"
    active = sub(conn, subscription_id)
    assert active["status"] == "active" and active["current_period_start"] == renewal["period_start"]
    assert active["payment_method_id"] == payment["payment_method_id"] is not None  # saved for next time


def test_no_saved_method_expires_when_the_last_step_has_passed_and_its_payment_is_cancelled(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    subscription_id: uuid.UUID,
    renew: Renew,
) -> None:
    renewal = renewed_on_session(conn, subscription_id, renew)

    travel(conn, subscription_id, 5 * DAY + timedelta(minutes=1))
    assert renew()["expired"] == 1

    assert sub(conn, subscription_id)["status"] == "expired"
    assert fake.payments[renewal["payment_id"]]["status"] == "cancelled"
    assert invoices_of(conn, subscription_id)[-1]["status"] == "failed"


def test_complete_subscription_refuses_while_an_off_session_attempt_is_pending(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    fake.off_session_outcomes = ["failed", "processing"]
    renew()
    travel(conn, due, DAY)
    renew()  # step 1: the bank is still processing

    with pytest.raises(errors.DomainError, match="renewal payment in progress"):
        commands.complete(conn, client, due)


def test_an_off_session_3ds_demand_is_cancelled_and_counts_as_a_failure(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    fake.off_session_outcomes = ["requires_customer_action"]

    assert renew()["failed"] == 1

    renewal = invoices_of(conn, due)[-1]
    assert renewal["status"] == "failed" and sub(conn, due)["status"] == "past_due"
    [cancel] = fake.calls_to("POST", f"/payments/{renewal['payment_id']}/cancel")
    assert cancel.body == {"cancellation_reason": "authentication required off-session"}
    assert fake.payments[renewal["payment_id"]]["status"] == "cancelled"


def test_a_definitive_rejection_of_a_renewal_is_past_due(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    fake.fail_next("POST /payments", Failure(status=400, code="IR_16", message="payment method revoked"))

    assert renew()["failed"] == 1
    assert sub(conn, due)["status"] == "past_due"


# -- never two charges for one period ---------------------------------------------------------------


def test_two_renew_sweeps_at_once_charge_each_period_once(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    own_connections: OwnConnections,
    renewals_due: Callable[[int], list[uuid.UUID]],
) -> None:
    due = renewals_due(12)
    totals: list[dict[str, int]] = []

    def sweep() -> None:
        with own_connections() as (own, own_client):
            totals.append(billing.renew(own, own_client, settings, batch_size=3))

    at_once(*[sweep] * 3)

    assert sum(t["invoiced"] for t in totals) == 12 and sum(t["paid"] for t in totals) == 12
    assert len(charges(fake)) == 12 + 12
    for subscription_id in due:
        assert [i["status"] for i in invoices_of(conn, subscription_id)] == ["paid", "paid"]


def test_a_renewal_racing_its_own_webhook_applies_once(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    receiver: str,
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    period_end = sub(conn, due)["current_period_end"]
    fake.webhook_url, fake.webhook_secret = f"{receiver}/webhooks/hyperswitch", settings.webhook_secrets[0]

    renew()
    time.sleep(0.3)  # the fake sends its webhook once it has answered
    join(broker)

    renewal_rows = [r for r in log_rows(conn) if r["user_agent"] == "Hyperswitch-Backend-Server"]
    assert [r["processing_result"] for r in renewal_rows] == ["skipped: invoice already paid"]
    after = sub(conn, due)
    assert after["current_period_start"] == period_end and after["status"] == "active"


def test_replayed_and_reordered_renewal_webhooks_change_nothing(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    renew()
    renewal = invoices_of(conn, due)[-1]
    before = sub(conn, due)
    payment = fake.payments[renewal["payment_id"]]

    for event_type in ["payment_succeeded"] * 3 + ["payment_failed", "payment_cancelled"]:
        result = process(settings, store_event(conn, event_type, {**payment, "status": "failed"}))
        assert result == "skipped: invoice already paid"
    assert sub(conn, due) == before


def test_a_crash_between_the_invoice_commit_and_the_psp_call_is_finished_with_the_same_payment(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    psp_settings: Settings,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    # The PSP takes the charge, then hangs before answering: the sweep is killed mid-call.
    fake.fail_next("POST /payments", Failure(status=504, hang=5, acted=True))
    environ = {**os.environ, "DATABASE_URL": psp_settings.database_url, "HYPERSWITCH_ENABLED": "true"}
    environ |= {"HYPERSWITCH_URL": str(psp_settings.hyperswitch_url), "HYPERSWITCH_API_KEY": PSP_API_KEY}
    sweep = subprocess.Popen([sys.executable, "-m", "veza_worker.cli", "renew"], env=environ)
    deadline = time.monotonic() + 20
    while len(charges(fake)) < 2:
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.02)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()

    [_, unsent] = invoices_of(conn, due)
    assert unsent["status"] == "pending" and unsent["submitted_at"] is None
    conn.execute(
        "UPDATE subscription_invoices SET created_at = now() - interval '3 minutes' WHERE id = %s",
        [unsent["id"]],
    )

    assert renew()["resent"] == 1

    assert [i["status"] for i in invoices_of(conn, due)] == ["paid", "paid"]
    renewal_posts = [c for c in charges(fake) if c.body["payment_id"] == unsent["payment_id"]]
    assert len(renewal_posts) == 2  # the killed one and the retry, which got HE_01 and read it back
    assert len(fake.payments) == 2 and fake.payments[unsent["payment_id"]]["status"] == "succeeded"


# -- cancel and resume ------------------------------------------------------------------------------


def test_cancel_at_period_end_keeps_access_resume_undoes_it_and_the_period_end_cancels(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    subscription_id: uuid.UUID,
    renew: Renew,
    gate: Gate,
) -> None:
    period_end = sub(conn, subscription_id)["current_period_end"]

    out = commands.cancel(conn, client, subscription_id, now=False)
    assert out == {
        "subscription_id": str(subscription_id),
        "status": "active",
        "cancel_at_period_end": True,
        "cancel_at": period_end,
        "canceled_at": None,
    }
    assert gate(subscription_id)["allowed"] is True
    resumed = commands.resume(conn, subscription_id)
    assert resumed["cancel_at_period_end"] is False and resumed["cancel_at"] is None
    commands.cancel(conn, client, subscription_id, now=False)

    to_period_end(conn, subscription_id)
    counts = renew()

    assert (counts["canceled"], counts["invoiced"]) == (1, 0)
    ended = sub(conn, subscription_id)
    assert ended["status"] == "canceled" and ended["canceled_at"] is not None
    assert len(charges(fake)) == 1 and gate(subscription_id)["allowed"] is False


def test_cancel_now_ends_access_at_once(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    subscription_id: uuid.UUID,
    gate: Gate,
) -> None:

    out = commands.cancel(conn, client, subscription_id, now=True)

    assert out["status"] == "canceled" and out["canceled_at"] is not None and out["cancel_at"] is None
    assert gate(subscription_id)["reason"] == "subscription canceled"
    with pytest.raises(errors.DomainError, match="already canceled"):
        commands.cancel(conn, client, subscription_id, now=True)
    with pytest.raises(errors.DomainError, match="only active or trialing can resume"):
        commands.resume(conn, subscription_id)


def test_cancelling_a_past_due_subscription_cancels_its_pending_payment_at_the_psp(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    subscription_id: uuid.UUID,
    renew: Renew,
) -> None:
    renewal = renewed_on_session(conn, subscription_id, renew)

    out = commands.cancel(conn, client, subscription_id, now=False)  # past_due: at once

    assert out["status"] == "canceled"
    assert fake.payments[renewal["payment_id"]]["status"] == "cancelled"
    assert invoices_of(conn, subscription_id)[-1]["status"] == "failed"


def test_a_canceled_trial_is_never_invoiced(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    with_trial = make_plan(conn, 999, trial_days=7)
    out = commands.subscribe(conn, client, uuid.uuid4(), with_trial)
    subscription_id = uuid.UUID(out["subscription_id"])

    assert commands.cancel(conn, client, subscription_id, now=False)["cancel_at_period_end"] is True
    travel(conn, subscription_id, 8 * DAY)
    assert billing.end_trials(conn, client)["canceled"] == 1

    assert sub(conn, subscription_id)["status"] == "canceled"
    assert invoices_of(conn, subscription_id) == [] and fake.calls == []


def test_renew_racing_cancel_never_keeps_money_for_a_canceled_period(
    conn: psycopg.Connection[Any],
    settings: Settings,
    own_connections: OwnConnections,
    renewals_due: Callable[[int], list[uuid.UUID]],
) -> None:
    due = renewals_due(6)

    def sweep() -> None:
        with own_connections() as (own, own_client):
            billing.renew(own, own_client, settings, batch_size=1)

    def cancel_all() -> None:
        with own_connections() as (own, own_client):
            for subscription_id in due:
                commands.cancel(own, own_client, subscription_id, now=False)

    at_once(sweep, cancel_all)

    for subscription_id in due:
        state = sub(conn, subscription_id)
        renewals = invoices_of(conn, subscription_id)[1:]
        assert len(renewals) <= 1
        if state["status"] == "canceled":  # the cancel came first: nothing charged, or charged and refunded
            kept = [i for i in renewals if i["status"] == "paid"]
            refunded = rows(
                conn, "SELECT 1 FROM refunds WHERE invoice_id = ANY(%s::uuid[])", [i["id"] for i in kept]
            )
            assert len(refunded) == len(kept)
        else:  # the renewal came first: the new period is paid and ends the subscription at its end
            assert state["status"] == "active" and state["cancel_at_period_end"] is True
            assert [i["status"] for i in renewals] == ["paid"]


def test_the_cancel_and_resume_commands(
    conn: psycopg.Connection[Any],
    psp_settings: Settings,
    subscription_id: uuid.UUID,
) -> None:

    canceled = run_cli("cancel-subscription", str(subscription_id), settings=psp_settings)
    assert canceled.returncode == 0, canceled.stderr
    out = json.loads(canceled.stdout)
    assert set(out) == {"subscription_id", "status", "cancel_at_period_end", "cancel_at", "canceled_at"}
    assert out["cancel_at_period_end"] is True
    resumed = json.loads(run_cli("resume-subscription", str(subscription_id), settings=psp_settings).stdout)
    assert set(resumed) == set(out) and resumed["cancel_at_period_end"] is False
    now = json.loads(
        run_cli("cancel-subscription", str(subscription_id), "--now", settings=psp_settings).stdout
    )
    assert now["status"] == "canceled"

    for command in ("cancel-subscription", "resume-subscription"):
        again = run_cli(command, str(subscription_id), settings=psp_settings)
        assert again.returncode == 1 and again.stdout == ""
        unknown = run_cli(command, str(uuid.uuid4()), settings=psp_settings)
        assert unknown.returncode == 1 and "not found" in unknown.stderr

    swept = run_cli("renew", settings=psp_settings)
    assert swept.returncode == 0, swept.stderr
    assert set(json.loads(swept.stdout)) == set(billing.RENEW_COUNTS)


# -- payments that never become final, and money nobody wants --------------------------------------


def test_a_first_payment_never_completed_is_cancelled_at_the_psp_after_the_expiry(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    monthly: uuid.UUID,
    tick: Tick,
) -> None:
    out = commands.subscribe(conn, client, uuid.uuid4(), monthly)
    subscription_id = uuid.UUID(out["subscription_id"])
    travel(conn, subscription_id, timedelta(hours=2))
    assert tick()["subscriptions"]["unchanged"] == 1
    conn.execute("DELETE FROM reconcile_state")
    travel(conn, subscription_id, DAY)

    counts = tick()["subscriptions"]

    assert counts == {"checked": 1, "cancelled": 1}
    assert fake.payments[out["payment_id"]]["status"] == "cancelled"
    assert sub(conn, subscription_id)["status"] == "expired"


def test_a_renewal_paid_after_the_subscription_was_canceled_is_refunded_automatically(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    due: uuid.UUID,
    renew: Renew,
) -> None:
    fake.off_session_outcomes = ["processing"]
    renew()
    renewal = invoices_of(conn, due)[-1]
    fake.fail_next("POST /payments/cancel", Failure(status=503))  # the cancel does not get through
    commands.cancel(conn, client, due, now=True)
    assert invoices_of(conn, due)[-1]["status"] == "pending"

    payment = settle_payment(fake, renewal["payment_id"], "succeeded")  # the bank said yes after all
    assert process(settings, store_event(conn, "payment_succeeded", payment)) == "ok"
    assert automatic_refunds.send_unsent(conn, client) == {"sent": 1, "rejected": 0, "ambiguous": 0}

    refund = row(conn, "SELECT * FROM refunds")
    assert refund["invoice_id"] == renewal["id"] and refund["submitted_at"] is not None
    [posted] = fake.calls_to("POST", "/refunds")
    assert posted.body["amount"] == 999 and posted.body["payment_id"] == renewal["payment_id"]
    assert sub(conn, due)["status"] == "canceled"
    psp_refund = fake.refunds[refund["hyperswitch_refund_id"]]
    psp_refund["status"] = "succeeded"
    assert process(settings, store_event(conn, "refund_succeeded", psp_refund)) == "ok"
    assert row(conn, "SELECT status FROM refunds")["status"] == "succeeded"


def test_the_reconciler_sends_an_invoice_the_psp_never_got_instead_of_failing_it(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    monthly: uuid.UUID,
    tick: Tick,
) -> None:
    fake.fail_next("POST /payments", Failure(status=502))  # never reached the PSP
    with pytest.raises(errors.PaymentProviderUnavailable):
        commands.subscribe(conn, client, uuid.uuid4(), monthly)
    [invoice] = rows(conn, "SELECT * FROM subscription_invoices")
    travel(conn, invoice["subscription_id"], timedelta(hours=1))

    assert tick()["subscriptions"] == {"checked": 1, "resent": 1}

    sent = row(conn, "SELECT * FROM subscription_invoices")
    assert (
        sent["submitted_at"] is not None
        and sent["client_secret"] == fake.payments[sent["payment_id"]]["client_secret"]
    )
    assert sub(conn, invoice["subscription_id"])["status"] == "pending_payment"


def test_a_trial_ended_with_no_provider_is_charged_by_the_reconciler_once_one_is_configured(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    tick: Tick,
) -> None:
    with_trial = make_plan(conn, 999, trial_days=7)
    out = commands.subscribe(conn, None, uuid.uuid4(), with_trial)
    subscription_id = uuid.UUID(out["subscription_id"])
    travel(conn, subscription_id, 8 * DAY)
    assert billing.end_trials(conn, None)["no_provider"] == 1
    travel(conn, subscription_id, DAY / 24)

    assert tick()["subscriptions"] == {"checked": 1, "resent": 1}

    [invoice] = invoices_of(conn, subscription_id)
    assert invoice["submitted_at"] is not None and invoice["payment_id"] in fake.payments
    [call] = charges(fake)
    assert call.headers["idempotency-key"] == str(subscription_id)  # a first payment keys on the subscription
    assert sub(conn, subscription_id)["status"] == "pending_payment"  # charged, not expired


def test_an_automatic_invoice_refund_whose_webhook_was_lost_is_settled_by_the_reconciler(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    tick: Tick,
) -> None:
    out = commands.subscribe(conn, client, uuid.uuid4(), make_plan(conn, 999))
    commands.cancel(conn, client, uuid.UUID(out["subscription_id"]), now=True)  # cancels the payment...
    fake.payments[out["payment_id"]]["status"] = "requires_payment_method"
    payment = settle_payment(fake, out["payment_id"], "succeeded")  # ...which the bank took anyway
    assert process(settings, store_event(conn, "payment_succeeded", payment)) == "ok"
    automatic_refunds.send_unsent(conn, client)
    psp_id = row(conn, "SELECT hyperswitch_refund_id FROM refunds")["hyperswitch_refund_id"]
    fake.refunds[psp_id]["status"] = "succeeded"  # its webhook never comes
    conn.execute("UPDATE refunds SET submitted_at = now() - interval '1 hour'")

    counts = tick()

    assert counts["invoice_refunds"] == {"checked": 1, "settled": 1}
    assert row(conn, "SELECT status FROM refunds")["status"] == "succeeded"
