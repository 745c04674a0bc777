"""change-plan: an upgrade now for the prorated difference, switched only once paid; a downgrade, an
interval change or a free plan at the renewal; a trial switches for nothing.

Periods are set by SQL around the database's now (never slept); the PSP is the fake Hyperswitch on
a real uvicorn, its requests checked against the spec; every scenario ends with `audit` ok.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.factories import (
    OwnConnections,
    account,
    assert_audit_ok,
    make_plan,
    paid_up,
    to_period_end,
)
from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment
from tests.support import admin, at_once, process, row, rows, run_cli, store_event, url_for
from veza_worker import db, hyperswitch, ledger, reconcile
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing, commands, gate, plan_changes

# A 31-day period, 10 days gone: 999 → 2999 owes floor(2000 * 21 / 31) = 1354 (1354.84: the floor
# holds for 18 minutes of wall time, far longer than a test).
GONE, LEFT = timedelta(days=10), timedelta(days=21)
PRORATED = 1354


@pytest.fixture
def basic(conn: psycopg.Connection[Any]) -> uuid.UUID:
    return make_plan(conn, 999)


@pytest.fixture
def pro(conn: psycopg.Connection[Any]) -> uuid.UUID:
    return make_plan(conn, 2999)


@dataclass(frozen=True)
class Scene:
    """A customer paid up on `basic`, card saved, 10 days into a 31-day period; `pro` to move to."""

    conn: psycopg.Connection[Any]
    client: hyperswitch.Client
    fake: FakeHyperswitch
    settings: Settings
    subscription_id: uuid.UUID
    basic: uuid.UUID
    pro: uuid.UUID

    def change(self, subscription_id: uuid.UUID, plan_id: uuid.UUID) -> dict[str, Any]:
        return plan_changes.change(self.conn, self.client, subscription_id, plan_id)

    def sub(self, subscription_id: uuid.UUID) -> dict[str, Any]:
        return row(self.conn, "SELECT * FROM user_subscriptions WHERE id = %s", subscription_id)

    def invoices(self, subscription_id: uuid.UUID, kind: str) -> list[dict[str, Any]]:
        query = (
            "SELECT * FROM subscription_invoices WHERE subscription_id = %s AND kind = %s ORDER BY created_at"
        )
        return rows(self.conn, query, subscription_id, kind)

    def charges(self) -> list[Any]:
        return [c for c in self.fake.calls_to("POST", "/payments") if not c.path.endswith("/cancel")]

    def webhook(self, payment_id: str, outcome: str) -> str | None:
        payment = settle_payment(self.fake, payment_id, outcome)
        return process(self.settings, store_event(self.conn, f"payment_{outcome}", payment))

    def snapshot(self) -> list[Any]:
        """Every row a plan change could write."""
        return [
            rows(self.conn, "SELECT * FROM user_subscriptions ORDER BY id"),
            rows(self.conn, "SELECT * FROM subscription_invoices ORDER BY id"),
            rows(self.conn, "SELECT * FROM ledger_transactions ORDER BY id"),
        ]

    def pending_upgrade(self) -> dict[str, Any]:
        """An upgrade to `pro` whose off-session charge the bank answers later."""
        self.fake.off_session_outcomes = ["processing"]
        return self.change(self.subscription_id, self.pro)


@pytest.fixture
def scene(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    basic: uuid.UUID,
    pro: uuid.UUID,
) -> Scene:
    subscription_id = paid_up(conn, client, fake, settings, basic)
    conn.execute(
        "UPDATE user_subscriptions SET current_period_start = now() - %s, current_period_end = now() + %s"
        " WHERE id = %s",
        [GONE, LEFT, subscription_id],
    )
    return Scene(conn, client, fake, settings, subscription_id, basic, pro)


# -- upgrade ------------------------------------------------------------------------------------------


def test_an_upgrade_charges_the_prorated_difference_off_session_and_switches_only_on_its_webhook(
    scene: Scene,
) -> None:
    before = scene.sub(scene.subscription_id)

    out = scene.pending_upgrade()  # the bank answers later

    [invoice] = scene.invoices(scene.subscription_id, "proration")
    assert out == {
        "subscription_id": str(scene.subscription_id),
        "plan_id": str(scene.basic),  # not yet: nothing is paid
        "pending_plan_id": None,
        "effective": "now",
        "amount_due": PRORATED,
        "invoice_id": str(invoice["id"]),
        "payment_id": invoice["payment_id"],
        "client_secret": None,
    }
    assert (invoice["amount"], invoice["currency"], invoice["status"]) == (PRORATED, "EUR", "pending")
    assert (invoice["plan_id"], invoice["off_session"]) == (scene.pro, True)
    assert (invoice["period_start"], invoice["period_end"]) == (
        before["current_period_start"],
        before["current_period_end"],
    )
    call = scene.charges()[-1]
    assert call.headers["idempotency-key"] == str(invoice["id"])
    assert call.body["payment_id"] == invoice["payment_id"] == hyperswitch.merchant_id("pay", invoice["id"])
    assert (call.body["amount"], call.body["currency"]) == (PRORATED, "EUR")
    assert call.body["confirm"] is True and call.body["off_session"] is True
    assert call.body["recurring_details"] == {
        "type": "payment_method_id",
        "data": before["payment_method_id"],
    }
    assert call.body["customer"] == {"id": hyperswitch.merchant_id("cus", before["user_id"])}
    assert call.body["metadata"]["invoice_id"] == str(invoice["id"])
    assert "setup_future_usage" not in call.body
    assert scene.sub(scene.subscription_id)["plan_id"] == scene.basic

    assert scene.webhook(invoice["payment_id"], "succeeded") == "ok"

    after = scene.sub(scene.subscription_id)
    assert (after["plan_id"], after["status"], after["pending_plan_id"]) == (scene.pro, "active", None)
    assert (after["current_period_start"], after["current_period_end"]) == (
        before["current_period_start"],
        before["current_period_end"],
    )  # the period does not move
    assert account(scene.conn, ledger.REVENUE) == 999 + PRORATED
    assert scene.webhook(invoice["payment_id"], "succeeded") == "skipped: invoice already paid"
    status = gate.status(scene.conn, after["user_id"])
    assert (status["allowed"], status["plan_id"]) == (True, str(scene.pro))
    assert_audit_ok(scene.conn)


def test_an_upgrade_declined_at_once_exits_1_and_leaves_the_old_plan_active(
    scene: Scene, psp_settings: Settings
) -> None:
    scene.fake.off_session_outcomes = ["failed"]

    done = run_cli("change-plan", str(scene.subscription_id), str(scene.pro), settings=psp_settings)

    assert done.returncode == 1 and "payment declined: plan unchanged" in done.stderr
    [invoice] = scene.invoices(scene.subscription_id, "proration")
    assert json.loads(done.stdout)["invoice_id"] == str(invoice["id"]) and invoice["status"] == "failed"
    after = scene.sub(scene.subscription_id)
    assert (after["plan_id"], after["status"], after["past_due_since"]) == (scene.basic, "active", None)
    assert account(scene.conn, ledger.REVENUE) == 999
    assert_audit_ok(scene.conn)


def test_an_upgrade_whose_payment_fails_later_leaves_the_old_plan_active_not_past_due(scene: Scene) -> None:
    out = scene.pending_upgrade()

    assert scene.webhook(out["payment_id"], "failed") == "ok"

    after = scene.sub(scene.subscription_id)
    assert (after["plan_id"], after["status"], after["past_due_since"]) == (scene.basic, "active", None)
    assert gate.status(scene.conn, after["user_id"])["allowed"] is True
    # Asked again, the upgrade is a new attempt: a new invoice and payment.
    again = scene.change(scene.subscription_id, scene.pro)
    assert (
        again["invoice_id"] != out["invoice_id"] and scene.sub(scene.subscription_id)["plan_id"] == scene.pro
    )
    assert_audit_ok(scene.conn)


def test_without_a_saved_card_the_upgrade_is_on_session_with_its_client_secret(scene: Scene) -> None:
    scene.conn.execute("UPDATE user_subscriptions SET payment_method_id = NULL")

    out = scene.change(scene.subscription_id, scene.pro)

    [invoice] = scene.invoices(scene.subscription_id, "proration")
    assert out["client_secret"] == invoice["client_secret"] is not None
    assert out["amount_due"] == PRORATED and invoice["off_session"] is False
    call = scene.charges()[-1]
    assert "confirm" not in call.body and "recurring_details" not in call.body
    assert call.body["setup_future_usage"] == "off_session"  # the card is kept for the renewals
    assert call.headers["idempotency-key"] == str(invoice["id"])
    assert scene.sub(scene.subscription_id)["plan_id"] == scene.basic

    assert scene.webhook(out["payment_id"], "succeeded") == "ok"
    after = scene.sub(scene.subscription_id)
    assert after["plan_id"] == scene.pro and after["payment_method_id"] is not None
    assert_audit_ok(scene.conn)


def test_an_upgrade_paid_once_its_period_is_over_is_given_back_and_the_plan_stays(scene: Scene) -> None:
    """The customer pays the on-session upgrade after the period ended, before the renew sweep
    cancelled it: it bought nothing, so it is refunded in full and the old plan stays."""
    scene.conn.execute("UPDATE user_subscriptions SET payment_method_id = NULL")
    out = scene.change(scene.subscription_id, scene.pro)
    to_period_end(scene.conn, scene.subscription_id)

    assert scene.webhook(out["payment_id"], "succeeded") == "ok"

    assert scene.sub(scene.subscription_id)["plan_id"] == scene.basic
    refund = row(scene.conn, "SELECT amount, automatic, invoice_id FROM refunds")
    assert refund == {"amount": PRORATED, "automatic": True, "invoice_id": uuid.UUID(out["invoice_id"])}
    assert_audit_ok(scene.conn)


def test_the_same_change_twice_in_a_row_is_one_invoice_and_one_payment(scene: Scene) -> None:
    scene.conn.execute("UPDATE user_subscriptions SET payment_method_id = NULL")  # on-session: it waits
    first = scene.change(scene.subscription_id, scene.pro)
    second = scene.change(scene.subscription_id, scene.pro)

    assert second == first
    assert scene.webhook(first["payment_id"], "succeeded") == "ok"
    third = scene.change(scene.subscription_id, scene.pro)  # paid: the plan is in force, the invoice the same
    assert (third["invoice_id"], third["amount_due"], third["plan_id"]) == (
        first["invoice_id"],
        PRORATED,
        str(scene.pro),
    )
    assert len(scene.invoices(scene.subscription_id, "proration")) == 1
    assert len(scene.charges()) == 1 + 1  # the first payment and the upgrade
    assert_audit_ok(scene.conn)


def test_the_same_change_at_once_is_one_invoice_and_one_payment(
    scene: Scene, own_connections: OwnConnections
) -> None:
    outputs: list[dict[str, Any]] = []

    def ask() -> None:
        with own_connections() as (own, own_client):
            outputs.append(plan_changes.change(own, own_client, scene.subscription_id, scene.pro))

    at_once(*[ask] * 4)

    [invoice] = scene.invoices(scene.subscription_id, "proration")
    assert len(outputs) == 4 and {o["invoice_id"] for o in outputs} == {str(invoice["id"])}
    assert {o["amount_due"] for o in outputs} == {PRORATED}
    assert len(scene.charges()) == 1 + 1
    assert invoice["status"] == "paid" and scene.sub(scene.subscription_id)["plan_id"] == scene.pro
    assert_audit_ok(scene.conn)


def test_a_different_change_while_an_upgrade_awaits_payment_is_refused(
    scene: Scene, psp_settings: Settings
) -> None:
    scene.pending_upgrade()
    before = scene.snapshot()

    for other in (make_plan(scene.conn, 4999), make_plan(scene.conn, 499), scene.basic):
        done = run_cli("change-plan", str(scene.subscription_id), str(other), settings=psp_settings)
        assert done.returncode == 1 and "plan change payment pending" in done.stderr, done.stderr

    assert scene.snapshot() == before and len(scene.charges()) == 2


def test_a_401_on_the_upgrade_leaves_its_invoice_pending_and_the_renew_sweep_sends_it_again(
    scene: Scene, psp_settings: Settings
) -> None:
    scene.fake.fail_next(
        "POST /payments", Failure(401, "IR_01", "API key not provided or invalid API key used")
    )

    done = run_cli("change-plan", str(scene.subscription_id), str(scene.pro), settings=psp_settings)

    assert done.returncode == 1 and "payment provider unavailable, will be reconciled" in done.stderr
    [invoice] = scene.invoices(scene.subscription_id, "proration")
    assert (invoice["status"], invoice["submitted_at"]) == ("pending", None)
    assert scene.sub(scene.subscription_id)["plan_id"] == scene.basic
    scene.conn.execute(
        "UPDATE subscription_invoices SET created_at = now() - interval '3 minutes' WHERE id = %s",
        [invoice["id"]],
    )

    assert billing.renew(scene.conn, scene.client, psp_settings)["resent"] == 1  # the API key is fixed

    assert scene.sub(scene.subscription_id)["plan_id"] == scene.pro
    assert {c.body["payment_id"] for c in scene.charges()[1:]} == {invoice["payment_id"]}
    assert_audit_ok(scene.conn)


def test_the_reconciler_settles_an_upgrade_whose_webhook_never_came(scene: Scene) -> None:
    out = scene.pending_upgrade()
    settle_payment(scene.fake, out["payment_id"], "succeeded")  # its webhook is lost
    scene.conn.execute(
        "UPDATE subscription_invoices SET created_at = now() - interval '1 hour' WHERE kind = 'proration'"
    )

    assert reconcile.tick(scene.conn, scene.client, scene.settings)["subscriptions"]["settled"] == 1

    assert scene.sub(scene.subscription_id)["plan_id"] == scene.pro
    assert_audit_ok(scene.conn)


def test_an_upgrade_still_unpaid_at_period_end_is_cancelled_and_the_renewal_bills_the_plan_in_force(
    scene: Scene,
) -> None:
    out = scene.pending_upgrade()
    to_period_end(scene.conn, scene.subscription_id)

    counts = billing.renew(scene.conn, scene.client, scene.settings)

    assert (counts["upgrades_abandoned"], counts["invoiced"], counts["paid"]) == (1, 1, 1), counts
    [upgrade] = scene.invoices(scene.subscription_id, "proration")
    [renewal] = scene.invoices(scene.subscription_id, "renewal")
    assert upgrade["status"] == "failed" and scene.fake.payments[out["payment_id"]]["status"] == "cancelled"
    assert (renewal["amount"], renewal["plan_id"], renewal["status"]) == (999, scene.basic, "paid")
    assert scene.sub(scene.subscription_id)["plan_id"] == scene.basic
    assert_audit_ok(scene.conn)


def test_change_plan_racing_renew_at_period_end_never_charges_both(
    scene: Scene, own_connections: OwnConnections
) -> None:
    subscriptions = [
        paid_up(scene.conn, scene.client, scene.fake, scene.settings, scene.basic) for _ in range(4)
    ]
    for subscription_id in subscriptions:
        to_period_end(scene.conn, subscription_id, past=timedelta(seconds=1))
    scene.fake.off_session_outcomes = ["processing"] * len(subscriptions)  # renewals under way stay pending
    outputs: list[dict[str, Any]] = []

    def ask(subscription_id: uuid.UUID) -> Any:
        def run() -> None:
            with own_connections() as (own, own_client):
                outputs.append(plan_changes.change(own, own_client, subscription_id, scene.pro))

        return run

    def sweep() -> None:
        with own_connections() as (own, own_client):
            billing.renew(own, own_client, scene.settings)

    at_once(sweep, *[ask(s) for s in subscriptions])
    # What the race left due: the rows the changes held locked.
    billing.renew(scene.conn, scene.client, scene.settings)

    assert len(outputs) == len(subscriptions)
    assert {(o["amount_due"], o["effective"], o["pending_plan_id"]) for o in outputs} == {
        (0, "period_end", str(scene.pro))
    }
    assert rows(scene.conn, "SELECT 1 FROM subscription_invoices WHERE kind = 'proration'") == []
    for subscription_id in subscriptions:
        [renewal] = scene.invoices(subscription_id, "renewal")
        assert scene.webhook(renewal["payment_id"], "succeeded") == "ok"
        after = scene.sub(subscription_id)
        if renewal["plan_id"] == scene.pro:  # the change came first: the renewal billed it
            assert (renewal["amount"], after["plan_id"], after["pending_plan_id"]) == (2999, scene.pro, None)
        else:  # the renewal came first: the change waits for the next one
            assert (renewal["amount"], after["plan_id"], after["pending_plan_id"]) == (
                999,
                scene.basic,
                scene.pro,
            )
    # The scene's own first payment, then a first payment and one renewal each.
    assert len(scene.charges()) == 1 + 2 * len(subscriptions)
    assert_audit_ok(scene.conn)


def test_an_upgrade_asked_after_the_period_ended_charges_nothing_and_the_renewal_bills_it(
    scene: Scene,
) -> None:
    to_period_end(scene.conn, scene.subscription_id)

    out = scene.change(scene.subscription_id, scene.pro)

    assert (out["amount_due"], out["effective"], out["pending_plan_id"], out["invoice_id"]) == (
        0,
        "period_end",
        str(scene.pro),
        None,
    )
    assert len(scene.charges()) == 1
    assert billing.renew(scene.conn, scene.client, scene.settings)["plan_changes"] == 1
    [renewal] = scene.invoices(scene.subscription_id, "renewal")
    assert (renewal["amount"], renewal["status"], scene.sub(scene.subscription_id)["plan_id"]) == (
        2999,
        "paid",
        scene.pro,
    )
    assert_audit_ok(scene.conn)


# -- downgrade, interval change, free -----------------------------------------------------------------


def test_a_downgrade_waits_for_the_renewal_which_bills_the_new_amount_and_change_back_clears_it(
    scene: Scene,
) -> None:
    cheap = make_plan(scene.conn, 499)

    out = scene.change(scene.subscription_id, cheap)

    assert out == {
        "subscription_id": str(scene.subscription_id),
        "plan_id": str(scene.basic),
        "pending_plan_id": str(cheap),
        "effective": "period_end",
        "amount_due": 0,
        "invoice_id": None,
        "payment_id": None,
        "client_secret": None,
    }
    before = scene.snapshot()
    assert scene.change(scene.subscription_id, cheap) == out and scene.snapshot() == before  # again: a no-op
    status = gate.status(scene.conn, scene.sub(scene.subscription_id)["user_id"])
    assert (status["plan_id"], status["pending_plan_id"], status["allowed"]) == (
        str(scene.basic),
        str(cheap),
        True,
    )
    back = scene.change(scene.subscription_id, scene.basic)
    assert (back["plan_id"], back["pending_plan_id"], back["invoice_id"]) == (str(scene.basic), None, None)
    assert scene.sub(scene.subscription_id)["pending_plan_id"] is None
    assert "pending_plan_id" not in gate.status(scene.conn, scene.sub(scene.subscription_id)["user_id"])

    scene.change(scene.subscription_id, cheap)
    to_period_end(scene.conn, scene.subscription_id)
    counts = billing.renew(scene.conn, scene.client, scene.settings)

    assert (counts["plan_changes"], counts["invoiced"], counts["paid"]) == (1, 1, 1), counts
    [renewal] = scene.invoices(scene.subscription_id, "renewal")
    assert (renewal["amount"], renewal["plan_id"], renewal["status"]) == (499, cheap, "paid")
    after = scene.sub(scene.subscription_id)
    assert (after["plan_id"], after["pending_plan_id"], after["status"]) == (cheap, None, "active")
    assert scene.charges()[-1].body["amount"] == 499 and len(scene.charges()) == 2  # nothing refunded either
    assert scene.fake.calls_to("POST", "/refunds") == []
    assert_audit_ok(scene.conn)


def test_an_interval_change_renews_on_the_new_interval(scene: Scene) -> None:
    yearly = make_plan(scene.conn, 9999, interval="year")

    assert scene.change(scene.subscription_id, yearly)["effective"] == "period_end"
    to_period_end(scene.conn, scene.subscription_id)
    billing.renew(scene.conn, scene.client, scene.settings)

    [renewal] = scene.invoices(scene.subscription_id, "renewal")
    assert (renewal["amount"], renewal["status"]) == (9999, "paid")
    assert renewal["period_end"].year == renewal["period_start"].year + 1
    assert_audit_ok(scene.conn)


def test_paid_to_free_is_active_without_a_period_at_the_renewal_and_never_charged_again(scene: Scene) -> None:
    free = make_plan(scene.conn, 0)
    scene.change(scene.subscription_id, free)
    to_period_end(scene.conn, scene.subscription_id)

    counts = billing.renew(scene.conn, scene.client, scene.settings)

    assert (counts["plan_changes"], counts["invoiced"]) == (1, 0)
    after = scene.sub(scene.subscription_id)
    assert (after["plan_id"], after["status"], after["current_period_end"]) == (free, "active", None)
    assert gate.status(scene.conn, after["user_id"])["allowed"] is True and len(scene.charges()) == 1
    assert_audit_ok(scene.conn)


def test_cancel_subscription_clears_a_pending_change(scene: Scene) -> None:
    scene.change(scene.subscription_id, make_plan(scene.conn, 499))

    commands.cancel(scene.conn, scene.client, scene.subscription_id, now=False)

    assert scene.sub(scene.subscription_id)["pending_plan_id"] is None


def test_free_to_paid_charges_the_full_price_as_a_first_invoice_and_starts_a_period(scene: Scene) -> None:
    free = make_plan(scene.conn, 0)
    subscription_id = uuid.UUID(
        commands.subscribe(scene.conn, scene.client, uuid.uuid4(), free)["subscription_id"]
    )

    out = scene.change(subscription_id, scene.pro)

    [first] = scene.invoices(subscription_id, "first")
    assert (out["amount_due"], out["plan_id"], out["client_secret"]) == (
        2999,
        str(free),
        first["client_secret"],
    )
    assert first["client_secret"] is not None and first["plan_id"] == scene.pro
    assert scene.webhook(out["payment_id"], "succeeded") == "ok"
    after = scene.sub(subscription_id)
    assert (after["plan_id"], after["status"]) == (scene.pro, "active")
    assert (
        timedelta(days=28)
        <= after["current_period_end"] - after["current_period_start"]
        <= timedelta(days=31)
    )
    assert gate.status(scene.conn, after["user_id"])["allowed"] is True
    assert_audit_ok(scene.conn)


# -- trials, previews, bad input ----------------------------------------------------------------------


def test_a_trial_switches_plan_at_once_for_nothing_and_keeps_its_end(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    trial = make_plan(conn, 999, trial_days=14)
    yearly = make_plan(conn, 9999, interval="year")
    subscription_id = uuid.UUID(commands.subscribe(conn, client, uuid.uuid4(), trial)["subscription_id"])
    ends = row(conn, "SELECT trial_ends_at FROM user_subscriptions")["trial_ends_at"]

    out = plan_changes.change(conn, client, subscription_id, yearly)

    assert (out["plan_id"], out["effective"], out["amount_due"], out["invoice_id"]) == (
        str(yearly),
        "now",
        0,
        None,
    )
    after = row(conn, "SELECT plan_id, status, trial_ends_at FROM user_subscriptions")
    assert (after["plan_id"], after["status"], after["trial_ends_at"]) == (yearly, "trialing", ends)
    assert fake.calls == []
    assert_audit_ok(conn)


def test_preview_writes_nothing_and_prints_what_the_change_then_charges(
    scene: Scene, psp_settings: Settings
) -> None:
    before = scene.snapshot()

    preview = run_cli(
        "change-plan", str(scene.subscription_id), str(scene.pro), "--preview", settings=psp_settings
    )

    assert preview.returncode == 0, preview.stderr
    assert scene.snapshot() == before and len(scene.charges()) == 1
    done = run_cli("change-plan", str(scene.subscription_id), str(scene.pro), settings=psp_settings)
    assert done.returncode == 0, done.stderr
    previewed, charged = json.loads(preview.stdout), json.loads(done.stdout)
    assert previewed["amount_due"] == charged["amount_due"] == scene.charges()[-1].body["amount"] == PRORATED
    assert previewed["invoice_id"] is None and charged["invoice_id"] is not None
    assert_audit_ok(scene.conn)


def test_every_bad_input_exits_1_and_writes_nothing(scene: Scene, psp_settings: Settings) -> None:
    past_due = paid_up(scene.conn, scene.client, scene.fake, scene.settings, scene.basic)
    scene.conn.execute("UPDATE user_subscriptions SET status = 'past_due' WHERE id = %s", [past_due])
    canceling = paid_up(scene.conn, scene.client, scene.fake, scene.settings, scene.basic)
    commands.cancel(scene.conn, scene.client, canceling, now=False)
    ended = paid_up(scene.conn, scene.client, scene.fake, scene.settings, scene.basic)
    commands.cancel(scene.conn, scene.client, ended, now=True)
    before, calls = scene.snapshot(), len(scene.fake.calls)

    cases = [
        ((str(uuid.uuid4()), str(scene.pro)), psp_settings, "not found"),
        ((str(scene.subscription_id), str(uuid.uuid4())), psp_settings, "not found"),
        ((str(past_due), str(scene.pro)), psp_settings, "is past_due"),
        ((str(ended), str(scene.pro)), psp_settings, "is canceled"),
        ((str(canceling), str(scene.pro)), psp_settings, "cancels at period end"),
        ((str(scene.subscription_id), str(scene.pro)), scene.settings, "payment provider not configured"),
    ]
    for args, configured, message in cases:
        done = run_cli("change-plan", *args, settings=configured)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
    assert run_cli("change-plan", "not-a-uuid", str(scene.pro), settings=psp_settings).returncode == 2

    assert scene.snapshot() == before and len(scene.fake.calls) == calls
    assert_audit_ok(scene.conn)


# -- the migration ------------------------------------------------------------------------------------


def test_the_migration_gives_existing_invoices_their_kind_and_plan(tmp_path: Path) -> None:
    earlier = [p for _, p in db.migration_files(db.migrations_dir()) if p.name < "0017"]
    for path in earlier:
        (tmp_path / path.name).write_text(path.read_text())
    name = f"veza_mig_{uuid.uuid4().hex[:12]}"
    url = url_for(name)
    try:
        db.migrate(url, tmp_path)
        with psycopg.connect(url, autocommit=True) as conn:
            plan_id = make_plan(conn, 999)
            active, pending = round_two_rows(conn, plan_id)
            db.migrate(url)
            found = rows(
                conn, "SELECT subscription_id, kind, plan_id FROM subscription_invoices ORDER BY created_at"
            )
    finally:
        admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    assert [(r["subscription_id"], r["kind"]) for r in found] == [
        (active, "first"),  # paid: its period was set when it was paid
        (active, "renewal"),
        (active, "renewal"),  # a dunning attempt of the same period
        (pending, "first"),  # not paid yet: no period
    ]
    assert {r["plan_id"] for r in found} == {plan_id}


def round_two_rows(conn: psycopg.Connection[Any], plan_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """An active subscription with its first payment, a failed renewal and its paid retry; a
    pending_payment one with its unpaid first invoice: as round 2's code left them."""
    active, pending = uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO user_subscriptions (id, user_id, plan_id, status) VALUES (%s, %s, %s, 'active'),"
        " (%s, %s, %s, 'pending_payment')",
        [active, uuid.uuid4(), plan_id, pending, uuid.uuid4(), plan_id],
    )
    invoices = [  # (age, period start ago, attempt, status)
        ("60 days", "60 days", 1, "paid"),
        ("30 days", "30 days", 1, "failed"),
        ("29 days", "30 days", 2, "paid"),
    ]
    for age, started, attempt, status in invoices:
        conn.execute(
            "INSERT INTO subscription_invoices (subscription_id, amount, currency, status, payment_id,"
            " period_start, period_end, attempt, created_at)"
            " VALUES (%s, 999, 'EUR', %s, %s, now() - %s::interval,"
            " now() - %s::interval + interval '1 month', %s, now() - %s::interval)",
            [active, status, f"pay_{uuid.uuid4().hex[:26]}", started, started, attempt, age],
        )
    conn.execute(
        "INSERT INTO subscription_invoices (subscription_id, amount, currency, payment_id)"
        " VALUES (%s, 999, 'EUR', %s)",
        [pending, f"pay_{uuid.uuid4().hex[:26]}"],
    )
    return active, pending
