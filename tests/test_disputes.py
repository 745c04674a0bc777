"""Disputes and chargebacks: the event that must never be lost."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.factories import (
    BUYER,
    REFUND_WINDOW,
    SELLER_A,
    SELLER_B,
    assert_audit_ok,
    balances,
    deliver,
    make_plan,
    moved,
    paid_out,
    payment_of,
    psp_settles,
    state,
    three_items,
)
from tests.fake_hyperswitch import FakeHyperswitch, dispute, settle_payment
from tests.support import SAMPLES, at_once, make_order, process, row, rows, run_cli, store, store_event
from veza_worker import errors, hyperswitch, reconcile, refunds
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands


def the_dispute(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return row(conn, "SELECT * FROM disputes")


COMPLETED = {
    "order": ("completed", 0),
    "balances": {SELLER_A: 800, SELLER_B: 200},
    "live_licenses": [200, 300, 500],
    "transfers": [("A", "pending", 800), ("B", "pending", 200)],
}
DISPUTED = {
    "order": ("disputed", 0),
    "balances": {SELLER_A: 0, SELLER_B: 0},
    "live_licenses": [200, 300, 500],
    "transfers": [("A", "on_hold", 800), ("B", "on_hold", 200)],
}
CHARGED_BACK = {
    "order": ("charged_back", 0),
    "balances": {SELLER_A: 0, SELLER_B: 0},
    "live_licenses": [],
    "transfers": [("A", "reversed", 800), ("B", "reversed", 200)],
}


def test_opened_then_won_holds_then_gives_back_exactly(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened", amount="1000")

    assert deliver(conn, settings, opened) == "ok"
    assert state(conn, order_id) == DISPUTED
    recorded = the_dispute(conn)
    assert (recorded["status"], recorded["stage"], recorded["amount"], recorded["order_id"]) == (
        "dispute_opened",
        "dispute",
        1000,
        order_id,
    )
    assert recorded["closed_at"] is None and recorded["challenge_required_by"] is not None
    for _ in range(3):
        assert deliver(conn, settings, opened) == "skipped: dispute already dispute_opened"
    with pytest.raises(errors.DomainError, match="order has a dispute"):
        refunds.open_refund(conn, order_id, BUYER, reason="duplicate", note=None, refund_window=REFUND_WINDOW)

    assert deliver(conn, settings, moved(fake, opened, "dispute_challenged")) == "ok"
    assert state(conn, order_id) == DISPUTED
    won = moved(fake, opened, "dispute_won")
    assert deliver(conn, settings, won) == "ok"
    assert state(conn, order_id) == COMPLETED
    assert the_dispute(conn)["closed_at"] is not None
    assert deliver(conn, settings, won) == "skipped: dispute already dispute_won"
    lower = {**won, "dispute_status": "dispute_opened"}
    assert deliver(conn, settings, lower) == "skipped: dispute already dispute_won"
    assert state(conn, order_id) == COMPLETED


def test_opened_then_lost_charges_back(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened")
    deliver(conn, settings, opened)

    assert deliver(conn, settings, moved(fake, opened, "dispute_lost")) == "ok"

    assert state(conn, order_id) == CHARGED_BACK
    with pytest.raises(errors.DomainError, match="order has a dispute"):
        refunds.open_refund(conn, order_id, BUYER, reason="duplicate", note=None, refund_window=REFUND_WINDOW)


@pytest.mark.parametrize("final", ["dispute_lost", "dispute_won"])
def test_a_final_event_arriving_first_has_the_effects_of_both_steps(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, final: str
) -> None:
    order_id = three_items(conn, settings, fake)
    closed = dispute(fake, payment_of(conn, order_id), final)

    assert deliver(conn, settings, closed) == "ok"
    assert (
        deliver(conn, settings, {**closed, "dispute_status": "dispute_opened"})
        == f"skipped: dispute already {final}"
    )

    assert state(conn, order_id) == (CHARGED_BACK if final == "dispute_lost" else COMPLETED)


def test_a_dispute_after_a_payout_takes_a_debt_and_a_win_pays_it_back(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    paid_out(conn, order_id, SELLER_A, 800)
    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened")
    deliver(conn, settings, opened)
    assert balances(conn) == {SELLER_A: (0, -800), SELLER_B: (0, 0)}  # A owes what the bank took

    deliver(conn, settings, moved(fake, opened, "dispute_won"))

    assert balances(conn) == {SELLER_A: (0, 0), SELLER_B: (0, 200)}  # exactly what was taken, back
    assert_audit_ok(conn)


def test_two_workers_delivering_opened_and_lost_at_once(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    for _ in range(10):
        order_id = three_items(conn, settings, fake)  # each round nets A and B back to zero
        opened = dispute(fake, payment_of(conn, order_id), "dispute_opened")
        opened_log = store_event(conn, "dispute_opened", dict(opened))
        lost_log = store_event(conn, "dispute_lost", {**opened, "dispute_status": "dispute_lost"})
        results: list[Any] = []

        def apply(log_id: int, results: list[Any] = results) -> None:
            results.append(process(settings, log_id))

        at_once(lambda: apply(opened_log), lambda: apply(lost_log))  # noqa: B023 (joined within the round)
        assert sorted(results) in (["ok", "ok"], ["ok", "skipped: dispute already dispute_lost"])
        assert state(conn, order_id) == CHARGED_BACK
    assert_audit_ok(conn)


def test_a_dispute_on_a_refunded_order_is_recorded_without_balance_effects(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    order_id = three_items(conn, settings, fake)
    out = refunds.request(conn, client, order_id, BUYER, refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, out)
    before = state(conn, order_id)

    lost = dispute(fake, payment_of(conn, order_id), "dispute_lost")
    assert deliver(conn, settings, lost) == "ok"

    assert state(conn, order_id) == before
    assert the_dispute(conn)["status"] == "dispute_lost"
    assert any(
        r.levelname == "ERROR" and "needs a human" in r.getMessage() and str(order_id) in r.getMessage()
        for r in caplog.records
    )


def test_a_dispute_on_an_unknown_payment_is_recorded_and_skipped_after_the_patience(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    body = (SAMPLES / "dispute_lost.json").read_bytes()
    log_id = store(conn, body)
    with pytest.raises(errors.UnknownObject):  # retried meanwhile: our commit may be late
        from veza_worker import webhooks

        with psycopg.connect(settings.database_url) as own, own.transaction():
            webhooks.apply(own, log_id, settings)
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '11 minutes'")

    assert process(settings, log_id) == "skipped: unknown payment"

    recorded = the_dispute(conn)
    assert (recorded["id"], recorded["amount"], recorded["status"]) == (
        "dp_Mc4Tx9Hb2Lw7Qn5Zr1Vk",
        2998,
        "dispute_lost",
    )
    assert (
        recorded["order_id"] is None and recorded["invoice_id"] is None and recorded["closed_at"] is not None
    )


def test_a_non_integer_amount_is_an_error(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    bad = {**dispute(fake, payment_of(conn, order_id), "dispute_opened"), "amount": "abc"}
    assert deliver(conn, settings, bad) == "error: invalid dispute amount"
    assert rows(conn, "SELECT 1 FROM disputes") == [] and state(conn, order_id) == COMPLETED


def test_a_lost_dispute_on_a_subscription_payment_cancels_it(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    plan = make_plan(conn, 999)
    out = commands.subscribe(conn, client, uuid.uuid4(), plan)
    payment = settle_payment(fake, out["payment_id"], "succeeded")
    process(settings, store_event(conn, "payment_succeeded", payment))
    opened = dispute(fake, out["payment_id"], "dispute_opened")

    assert deliver(conn, settings, opened) == "ok"
    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "active"  # opened changes nothing
    assert deliver(conn, settings, moved(fake, opened, "dispute_lost")) == "ok"

    assert row(conn, "SELECT status FROM user_subscriptions")["status"] == "canceled"
    assert the_dispute(conn)["invoice_id"] is not None


# -- lost webhooks: the reconciler -------------------------------------------------------------------


def test_a_withheld_dispute_webhook_is_found_by_one_tick(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id = three_items(conn, psp_settings, fake)
    dispute(fake, payment_of(conn, order_id), "dispute_opened")  # Hyperswitch gave up on its webhook

    counts = reconcile.tick(conn, client, psp_settings)["disputes"]

    assert counts == {"checked": 1, "settled": 1}
    assert state(conn, order_id) == DISPUTED
    [call] = fake.calls_to("GET", "/disputes/list")
    assert call.query == "limit=100"
    assert reconcile.tick(conn, client, psp_settings)["disputes"] == {"checked": 1, "unchanged": 1}


def test_a_dispute_closed_while_its_webhook_was_lost_is_found_through_its_get(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    order_id = three_items(conn, psp_settings, fake)
    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened")
    deliver(conn, psp_settings, opened)
    moved(fake, opened, "dispute_lost")  # webhook lost
    fake.unlisted.add(opened["dispute_id"])  # and the list no longer shows it (older than its page)

    counts = reconcile.tick(conn, client, psp_settings)["disputes"]

    assert counts == {"checked": 1, "settled": 1}
    assert state(conn, order_id) == CHARGED_BACK
    assert [c.path for c in fake.calls_to("GET", "/disputes/dp_")] == [f"/disputes/{opened['dispute_id']}"]


def test_the_disputes_command_lists_nearest_deadline_first_and_warns_once(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from veza_worker import disputes

    late = make_order(conn, [(SELLER_A, 100)])
    first = three_items(conn, settings, fake)
    near = dispute(fake, payment_of(conn, first), "dispute_opened")
    deliver(conn, settings, near)
    conn.execute("UPDATE disputes SET challenge_required_by = now() + interval '1 day'")
    conn.execute(
        "INSERT INTO disputes"
        " (id, payment_id, order_id, amount, currency, stage, status, challenge_required_by) VALUES"
        " ('dp_later', 'pay_x', %s, 100, 'USD', 'dispute', 'dispute_opened', now() + interval '9 days')",
        [late],
    )

    listed = json.loads(run_cli("disputes", "--open", DATABASE_URL=settings.database_url).stdout)

    assert [d["dispute_id"] for d in listed] == [near["dispute_id"], "dp_later"]
    assert set(listed[0]) == {
        "dispute_id",
        "order_id",
        "invoice_id",
        "amount",
        "currency",
        "status",
        "stage",
        "challenge_required_by",
    }
    assert disputes.warn_deadlines(conn) == 1 and disputes.warn_deadlines(conn) == 0
    assert any(
        "deadline near" in r.getMessage() and near["dispute_id"] in r.getMessage() for r in caplog.records
    )
