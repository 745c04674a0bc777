"""Refunds by item, and refunds made at the PSP: every refund, however it started, lands right."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.factories import (
    BUYER,
    REFUND_WINDOW,
    SELLER_A,
    SELLER_B,
    OwnConnections,
    Tick,
    payment_of,
    psp_settles,
    state,
    three_items,
)
from tests.fake_hyperswitch import FakeHyperswitch, refund_from_dashboard, settle_refund
from tests.support import at_once, make_order, process, row, rows, run_cli, store_event
from veza_worker import errors, hyperswitch, refunds
from veza_worker.settings import Settings


def item_ids(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> dict[int, uuid.UUID]:
    """{amount: item id}: the three items are told apart by their amounts."""
    return {
        r["amount"]: r["id"]
        for r in rows(conn, "SELECT id, amount FROM order_items WHERE order_id = %s", order_id)
    }


def ask(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    order_id: uuid.UUID,
    items: list[uuid.UUID] | None = None,
    by: uuid.UUID = BUYER,
) -> dict[str, Any]:
    return refunds.request(conn, client, order_id, by, items=items, refund_window=REFUND_WINDOW)


def test_one_item_then_the_other_two_each_exact_and_replays_change_nothing(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    items = item_ids(conn, order_id)

    first = ask(conn, client, order_id, [items[500]])
    assert first["status"] == "pending"
    assert fake.calls_to("POST", "/refunds")[-1].body["amount"] == 500
    first_log = psp_settles(conn, settings, fake, first)
    assert state(conn, order_id) == {
        "order": ("completed", 500),
        "balances": {SELLER_A: 300, SELLER_B: 200},
        "live_licenses": [200, 300],
        "transfers": [("A", "pending", 300), ("A", "reversed", 500), ("B", "pending", 200)],
    }

    rest = ask(conn, client, order_id)  # default: every item not yet refunded
    assert fake.calls_to("POST", "/refunds")[-1].body["amount"] == 500
    rest_log = psp_settles(conn, settings, fake, rest)
    done = state(conn, order_id)
    assert done == {
        "order": ("refunded", 1000),
        "balances": {SELLER_A: 0, SELLER_B: 0},
        "live_licenses": [],
        "transfers": [("A", "reversed", 300), ("A", "reversed", 500), ("B", "reversed", 200)],
    }

    for _ in range(3):  # replays, and a failure arriving after the success
        assert process(
            settings, store_event(conn, "refund_succeeded", fake.refunds[first["hyperswitch_refund_id"]])
        ) == ("skipped: refund already succeeded")
    late_failure = {**fake.refunds[rest["hyperswitch_refund_id"]], "status": "failed"}
    assert (
        process(settings, store_event(conn, "refund_failed", late_failure))
        == "skipped: refund already succeeded"
    )
    assert {first_log, rest_log} and state(conn, order_id) == done


def test_phase_one_rejections(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    items = item_ids(conn, order_id)
    other = make_order(conn, [(SELLER_A, 100)], buyer_id=BUYER)
    [foreign] = [r["id"] for r in rows(conn, "SELECT id FROM order_items WHERE order_id = %s", other)]

    with pytest.raises(errors.DomainError, match=f"item {foreign} is not an item of order {order_id}"):
        ask(conn, client, order_id, [foreign])
    with pytest.raises(errors.Forbidden, match="a seller refunds only their own items"):
        ask(conn, client, order_id, [items[200]], by=SELLER_A)
    with pytest.raises(errors.Forbidden, match="neither the buyer nor a seller"):
        ask(conn, client, order_id, by=uuid.uuid4())

    by_b = ask(conn, client, order_id, by=SELLER_B)  # a seller's default: their own items
    assert fake.calls_to("POST", "/refunds")[-1].body["amount"] == 200
    with pytest.raises(errors.DomainError, match="refund already in progress"):
        ask(conn, client, order_id, [items[500]])
    psp_settles(conn, settings, fake, by_b)
    with pytest.raises(
        errors.DomainError, match=f"item {items[200]} of order {order_id} is already refunded"
    ):
        ask(conn, client, order_id, [items[200]])
    with pytest.raises(errors.DomainError, match="nothing left to refund"):
        ask(conn, client, order_id, by=SELLER_B)
    assert len(rows(conn, "SELECT 1 FROM refunds")) == 1


def test_two_partial_refunds_at_once_one_wins_and_a_failed_ones_items_can_be_asked_again(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    own_connections: OwnConnections,
) -> None:
    order_id = three_items(conn, settings, fake)
    items = item_ids(conn, order_id)
    outcomes: list[Any] = []

    def refund(item: uuid.UUID) -> None:
        with own_connections() as (own_conn, own):
            try:
                outcomes.append(ask(own_conn, own, order_id, [item]))
            except errors.DomainError as exc:
                outcomes.append(str(exc))

    at_once(lambda: refund(items[500]), lambda: refund(items[300]))

    assert sorted(map(type, outcomes), key=str) == [dict, str] and "refund already in progress" in outcomes
    [winner] = [o for o in outcomes if isinstance(o, dict)]
    psp_settles(conn, settings, fake, winner, "failed")
    assert state(conn, order_id)["order"] == ("completed", 0)

    again = ask(conn, client, order_id, [items[500], items[300]])  # the failed refund's item is free again
    psp_settles(conn, settings, fake, again)
    assert state(conn, order_id)["order"] == ("completed", 800)


def test_the_psp_refusing_an_over_refund_fails_the_refund_with_its_message(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    psp_settings: Settings,
) -> None:
    order_id = three_items(conn, settings, fake)
    payment_id = payment_of(conn, order_id)
    refund_from_dashboard(fake, payment_id, 100, "succeeded")  # money already given back, unknown to us

    refused = run_cli("refund", str(order_id), "--by", str(BUYER), settings=psp_settings)

    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "refund rejected by payment provider: The refund amount exceeds the amount captured"
    )
    assert json.loads(refused.stdout)["status"] == "failed"
    assert state(conn, order_id)["order"] == ("completed", 0)


def test_the_refund_command_takes_items(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    settings: Settings,
    psp_settings: Settings,
) -> None:
    order_id = three_items(conn, settings, fake)
    items = item_ids(conn, order_id)

    done = run_cli(
        "refund",
        str(order_id),
        "--by",
        str(BUYER),
        "--item",
        str(items[300]),
        "--item",
        str(items[200]),
        settings=psp_settings,
    )

    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"refund_id", "hyperswitch_refund_id", "status"}
    assert fake.calls_to("POST", "/refunds")[-1].body["amount"] == 500
    assert {r["order_item_id"] for r in rows(conn, "SELECT order_item_id FROM refund_items")} == {
        items[300],
        items[200],
    }


# -- refunds made at the PSP -----------------------------------------------------------------------


def test_a_dashboard_refund_of_the_whole_remaining_amount_has_the_full_effects(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    psp_settles(conn, settings, fake, ask(conn, client, order_id, [item_ids(conn, order_id)[500]]))
    payment_id = payment_of(conn, order_id)

    dashboard = refund_from_dashboard(fake, payment_id, 500, "succeeded")
    log_id = store_event(conn, "refund_succeeded", dict(dashboard))
    assert process(settings, log_id) == "ok"
    assert (
        process(settings, store_event(conn, "refund_succeeded", dict(dashboard)))
        == "skipped: refund already succeeded"
    )

    adopted = row(conn, "SELECT * FROM refunds WHERE hyperswitch_refund_id = %s", dashboard["refund_id"])
    assert adopted["requested_by"] is None and adopted["note"] == "made at the payment provider"
    assert state(conn, order_id)["order"] == ("refunded", 1000)
    assert state(conn, order_id)["balances"] == {SELLER_A: 0, SELLER_B: 0}


def test_a_dashboard_refund_of_another_amount_is_recorded_and_needs_a_human(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = three_items(conn, settings, fake)
    before = state(conn, order_id)
    payment_id = payment_of(conn, order_id)

    dashboard = refund_from_dashboard(fake, payment_id, 250, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", dict(dashboard))) == "ok"

    adopted = row(conn, "SELECT status, amount FROM refunds")
    assert adopted == {"status": "succeeded", "amount": 250}
    assert state(conn, order_id) == before
    human = [r for r in caplog.records if r.levelno == logging.ERROR and "needs a human" in r.getMessage()]
    assert len(human) == 1 and str(order_id) in human[0].getMessage()


def test_an_unknown_refund_of_an_unknown_payment_is_still_skipped_after_the_patience(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    log_id = store_event(
        conn,
        "refund_succeeded",
        {"refund_id": "ref_nobody", "payment_id": "pay_nobody", "status": "succeeded", "amount": 5},
    )
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '11 minutes'")
    assert process(settings, log_id) == "skipped: unknown refund"


# -- the invariant, over random sequences ----------------------------------------------------------

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["ours", "dashboard"]),
        st.lists(st.sampled_from([500, 300, 200]), min_size=0, max_size=3, unique=True),
        st.sampled_from(["succeeded", "failed"]),
    ),
    min_size=1,
    max_size=6,
)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_the_invariant_holds_over_any_sequence_of_refunds(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    steps: Any,
) -> None:
    conn.execute(
        "DELETE FROM refund_items; DELETE FROM refunds; DELETE FROM licenses; DELETE FROM seller_transfers;"
        " DELETE FROM seller_balances; DELETE FROM hyperswitch_webhook_log"
    )
    order_id = three_items(conn, settings, fake)
    items = item_ids(conn, order_id)
    payment_id = payment_of(conn, order_id)
    for source, amounts, outcome in steps:
        if source == "ours":
            try:
                out = ask(conn, client, order_id, [items[a] for a in amounts] or None)
            except errors.DomainError:
                continue
            if out["status"] == "pending":
                psp_settles(conn, settings, fake, out, outcome)
        else:
            amount = (
                sum(amounts)
                or 1000
                - row(conn, "SELECT refunded_amount FROM orders WHERE id = %s", order_id)["refunded_amount"]
            )
            if amount <= 0:
                continue
            refund = refund_from_dashboard(fake, payment_id, amount, outcome)
            process(settings, store_event(conn, f"refund_{outcome}", dict(refund)))
        check_invariant(conn, order_id)


def check_invariant(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> None:
    order = row(conn, "SELECT total_amount, refunded_amount FROM orders WHERE id = %s", order_id)
    refunded_items = rows(
        conn,
        "SELECT i.id, i.seller_id, i.amount FROM order_items i WHERE i.order_id = %s AND EXISTS ("
        " SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id"
        "  WHERE ri.order_item_id = i.id AND r.status = 'succeeded')",
        order_id,
    )
    assert sum(i["amount"] for i in refunded_items) == order["refunded_amount"] <= order["total_amount"]
    live = rows(
        conn, "SELECT order_item_id FROM licenses WHERE order_id = %s AND revoked_at IS NULL", order_id
    )
    assert not {r["order_item_id"] for r in live} & {i["id"] for i in refunded_items}
    assert all(b["balance"] >= 0 for b in rows(conn, "SELECT balance FROM seller_balances"))
    for seller in (SELLER_A, SELLER_B):
        unrefunded = sum(
            r["amount"]
            for r in rows(
                conn,
                "SELECT id, amount FROM order_items WHERE order_id = %s AND seller_id = %s",
                order_id,
                seller,
            )
            if r["id"] not in {i["id"] for i in refunded_items}
        )
        balance = rows(conn, "SELECT balance FROM seller_balances WHERE seller_id = %s", seller)
        assert (balance[0]["balance"] if balance else 0) == unrefunded
        open_transfers = rows(
            conn,
            "SELECT amount FROM seller_transfers"
            " WHERE order_id = %s AND seller_id = %s AND status <> 'reversed'",
            order_id,
            seller,
        )
        assert sum(t["amount"] for t in open_transfers) == unrefunded


def test_a_refund_in_review_is_asked_about_until_a_human_is_needed(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    tick: Tick,
) -> None:

    order_id = three_items(conn, settings, fake)
    out = ask(conn, client, order_id, [item_ids(conn, order_id)[200]])
    settle_refund(fake, out["hyperswitch_refund_id"], "review")
    conn.execute("UPDATE refunds SET submitted_at = now() - interval '1 hour'")

    for _ in range(5):
        assert tick()["refunds"] == {"checked": 1, "unchanged": 1}
        conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")

    assert row(conn, "SELECT status FROM refunds")["status"] == "pending"
    assert any(
        "needs a human" in r.getMessage() and "psp_status=review" in r.getMessage() for r in caplog.records
    )
