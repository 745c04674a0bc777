"""The three-phase refund: phase 1 checks, phase 2 against the fake PSP, phase 3 by webhook."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from psycopg import sql

from tests.factories import OwnConnections, account, assert_audit_ok, balances, paid_out
from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment, settle_refund, webhook_body
from tests.support import (
    at_once,
    log_rows,
    make_order,
    make_pending_refund,
    post_webhook,
    process,
    row,
    rows,
    run_cli,
    store,
    store_event,
    wait_for,
)
from veza_worker import errors, hyperswitch, ledger, refunds
from veza_worker.settings import Settings

SELLER_A, SELLER_B, BUYER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
WINDOW = timedelta(days=14)


def completed_order(
    conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch | None = None, **kwargs: Any
) -> uuid.UUID:
    """An order paid the way a webhook completes it: licenses, credits, transfers, the PSP's payment."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(conn, [(SELLER_A, 1000), (SELLER_B, 600)], buyer_id=BUYER, payment_id=payment_id)
    paid = {"payment_id": payment_id, "status": "succeeded", "amount": 1600, "currency": "USD"}
    assert process(settings, store_event(conn, "payment_succeeded", paid)) == "ok"
    if fake is not None:
        fake.payments[payment_id] = {**paid, "client_secret": "cs", "metadata": {}}
        settle_payment(fake, payment_id, "succeeded")
    if kwargs:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder()) for column in kwargs
        )
        query = sql.SQL("UPDATE orders SET {} WHERE id = {}").format(assignments, sql.Placeholder())
        conn.execute(query, [*kwargs.values(), order_id])
    return order_id


def request(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, order_id: uuid.UUID, **kwargs: Any
) -> Any:
    kwargs.setdefault("refund_window", WINDOW)
    return refunds.request(conn, client, order_id, kwargs.pop("by", BUYER), **kwargs)


def order_status(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> str:
    return str(row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"])


def the_refund(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return row(conn, "SELECT * FROM refunds")


# -- phases 1 and 2 ---------------------------------------------------------------------------------


def test_a_buyer_refund_is_submitted_and_stays_pending(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)

    out = request(conn, client, order_id)

    refund = the_refund(conn)
    assert out == {
        "refund_id": str(refund["id"]),
        "hyperswitch_refund_id": refund["hyperswitch_refund_id"],
        "status": "pending",
    }
    assert refund["status"] == "pending" and refund["submitted_at"] is not None
    assert refund["amount"] == 1600 and refund["reason"] == "requested_by_customer"
    assert order_status(conn, order_id) == "refund_pending"
    [call] = fake.calls_to("POST", "/refunds")
    assert call.body["refund_id"] == refund["hyperswitch_refund_id"]  # the id the PSP received
    assert call.headers["idempotency-key"] == str(refund["id"])
    assert call.body["metadata"] == {"order_id": str(order_id), "refund_id": str(refund["id"])}
    assert list(fake.refunds) == [refund["hyperswitch_refund_id"]]


def test_a_synchronous_succeeded_answer_does_not_make_the_refund_terminal(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)
    fake.before_reply["POST /refunds"] = lambda refund: refund.update(status="succeeded")

    assert request(conn, client, order_id)["status"] == "pending"
    assert order_status(conn, order_id) == "refund_pending"


def test_a_seller_of_the_order_may_refund_a_stranger_may_not(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)

    with pytest.raises(errors.Forbidden, match="neither the buyer nor a seller"):
        request(conn, client, order_id, by=uuid.uuid4())
    assert rows(conn, "SELECT 1 FROM refunds") == []
    assert request(conn, client, order_id, by=SELLER_B)["status"] == "pending"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "pending"}, "is pending: only completed orders can be refunded"),
        ({"status": "failed"}, "is failed: only completed orders can be refunded"),
        ({"status": "refunded"}, "is refunded: only completed orders can be refunded"),
        ({"status": "refund_pending"}, "refund already in progress"),
        ({"payment_id": None}, "has no payment to refund"),
        ({"total_amount": 0}, "has no payment to refund"),
        ({"refund_deadline": "2020-01-01T00:00:00Z"}, "refund window closed on 2020-01-01 00:00 UTC"),
    ],
    ids=["pending", "failed", "refunded", "in-progress", "no-payment", "free-order", "past-deadline"],
)
def test_each_phase_one_rejection_has_its_own_message_and_writes_nothing(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    changes: dict[str, Any],
    message: str,
) -> None:
    order_id = completed_order(conn, settings, fake, **changes)
    before = order_status(conn, order_id)

    with pytest.raises(errors.DomainError, match=message):
        request(conn, client, order_id)

    assert rows(conn, "SELECT 1 FROM refunds") == [] and order_status(conn, order_id) == before
    assert fake.calls_to("POST", "/refunds") == []


@pytest.mark.parametrize(("days_ago", "allowed"), [(13, True), (15, False)])
def test_without_a_stored_deadline_the_window_runs_from_completed_at(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    days_ago: int,
    allowed: bool,
) -> None:
    order_id = completed_order(conn, settings, fake, refund_deadline=None)
    conn.execute("UPDATE orders SET completed_at = now() - make_interval(days => %s)", [days_ago])

    if allowed:
        assert request(conn, client, order_id)["status"] == "pending"
    else:
        with pytest.raises(errors.DomainError, match="refund window closed"):
            request(conn, client, order_id)


def test_an_unknown_order_is_not_found(conn: psycopg.Connection[Any], client: hyperswitch.Client) -> None:
    with pytest.raises(errors.NotFound):
        request(conn, client, uuid.uuid4())


def test_a_second_request_while_one_is_pending_is_refused(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)
    request(conn, client, order_id)

    with pytest.raises(errors.DomainError, match="refund already in progress"):
        request(conn, client, order_id, by=SELLER_A)
    assert len(fake.refunds) == 1


def test_a_pending_refund_the_order_status_does_not_show_still_blocks_a_second_one(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)
    request(conn, client, order_id)
    conn.execute("UPDATE orders SET status = 'completed'")  # the host app reopened it by hand

    with pytest.raises(errors.DomainError, match="refund already in progress"):
        request(conn, client, order_id)
    assert len(rows(conn, "SELECT 1 FROM refunds")) == 1 and len(fake.refunds) == 1


def test_two_requests_at_once_open_one_refund(
    conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch, own_connections: OwnConnections
) -> None:
    order_id = completed_order(conn, settings, fake)
    outcomes: list[str] = []

    def ask(by: uuid.UUID) -> None:
        with own_connections() as (own, psp_client):
            try:
                outcomes.append(request(own, psp_client, order_id, by=by)["status"])
            except errors.DomainError as exc:
                outcomes.append(str(exc))

    at_once(*[functools.partial(ask, by) for by in (BUYER, SELLER_A, SELLER_B, BUYER)])

    assert sorted(outcomes) == ["pending", *["refund already in progress"] * 3]
    assert len(rows(conn, "SELECT 1 FROM refunds")) == 1 and len(fake.refunds) == 1


def test_a_definitive_psp_rejection_fails_the_refund_and_the_buyer_can_retry(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)
    fake.fail_next("POST /refunds", Failure(status=400, code="IR_14", message="Payment is disputed"))

    with pytest.raises(
        errors.DomainError, match=r"^refund rejected by payment provider: Payment is disputed$"
    ) as raised:
        request(conn, client, order_id)

    refund = the_refund(conn)
    assert raised.value.output == {
        "refund_id": str(refund["id"]),
        "hyperswitch_refund_id": refund["hyperswitch_refund_id"],
        "status": "failed",
    }
    assert refund["error_message"] == "Payment is disputed" and refund["failed_at"] is not None
    assert order_status(conn, order_id) == "completed"
    assert request(conn, client, order_id)["status"] == "pending"  # a new refund, a new refund_id


def test_an_ambiguous_psp_failure_changes_nothing_and_a_retry_refunds_once(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, settings, fake)
    fake.fail_next("POST /refunds", Failure(status=503))

    with pytest.raises(errors.DomainError, match=r"^payment provider unavailable, will be reconciled$"):
        request(conn, client, order_id)

    refund = the_refund(conn)
    assert refund["status"] == "pending" and refund["submitted_at"] is None
    assert order_status(conn, order_id) == "refund_pending"
    opened = refunds.Opened(
        refund["id"], refund["hyperswitch_refund_id"], order_id, fake_payment_id(fake), refund["amount"]
    )
    refunds.submit(
        conn, client, opened, reason="requested_by_customer", note=None
    )  # the same refund_id again
    refunds.submit(conn, client, opened, reason="requested_by_customer", note=None)
    assert len(fake.refunds) == 1 and the_refund(conn)["submitted_at"] is not None


def fake_payment_id(fake: FakeHyperswitch) -> str:
    [payment_id] = fake.payments
    return payment_id


# -- phase 3: webhooks ------------------------------------------------------------------------------


def refund_object(conn: psycopg.Connection[Any], status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    refund = the_refund(conn)
    return {
        "refund_id": refund["hyperswitch_refund_id"],
        "status": status,
        "amount": refund["amount"],
        **extra,
    }


@pytest.fixture
def pending_refund(conn: psycopg.Connection[Any], settings: Settings) -> uuid.UUID:
    """A completed order of two sellers with a pending refund; returns the order id."""
    order_id = completed_order(conn, settings)
    make_pending_refund(conn, order_id)
    return order_id


def assert_refunded(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> None:
    refund = the_refund(conn)
    assert refund["status"] == "succeeded" and refund["succeeded_at"] is not None
    assert order_status(conn, order_id) == "refunded"
    assert rows(conn, "SELECT 1 FROM licenses WHERE revoked_at IS NULL") == []
    assert {r["balance"] for r in rows(conn, "SELECT balance FROM seller_balances")} == {0}
    assert {r["status"] for r in rows(conn, "SELECT status FROM seller_transfers")} == {"reversed"}


def test_refund_succeeded_finalizes_everything_and_replays_change_nothing(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID
) -> None:
    assert process(settings, store_event(conn, "refund_succeeded", refund_object(conn))) == "ok"
    assert_refunded(conn, pending_refund)
    first = the_refund(conn)["succeeded_at"]

    for _ in range(3):
        result = process(settings, store_event(conn, "refund_succeeded", refund_object(conn)))
        assert result == "skipped: refund already succeeded"
    late_failure = refund_object(conn, "failed", error_message="x")
    assert (
        process(settings, store_event(conn, "refund_failed", late_failure))
        == "skipped: refund already succeeded"
    )

    assert the_refund(conn)["succeeded_at"] == first
    assert_refunded(conn, pending_refund)


def test_refund_succeeded_is_all_or_nothing(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID
) -> None:
    conn.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'transfer ledger offline'; END $$"
    )
    conn.execute("CREATE TRIGGER boom BEFORE UPDATE ON seller_transfers FOR EACH ROW EXECUTE FUNCTION boom()")
    balances = rows(conn, "SELECT seller_id, balance FROM seller_balances ORDER BY seller_id")

    result = process(settings, store_event(conn, "refund_succeeded", refund_object(conn)))

    assert result is not None and result.startswith("error: RaiseException: transfer ledger offline")
    assert the_refund(conn)["status"] == "pending" and the_refund(conn)["succeeded_at"] is None
    assert order_status(conn, pending_refund) == "refund_pending"
    assert rows(conn, "SELECT 1 FROM licenses WHERE revoked_at IS NOT NULL") == []
    assert rows(conn, "SELECT seller_id, balance FROM seller_balances ORDER BY seller_id") == balances
    assert {r["status"] for r in rows(conn, "SELECT status FROM seller_transfers")} == {"pending"}


def test_refund_failed_fails_the_refund_with_the_psp_message_and_reopens_the_order(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID
) -> None:
    failed = refund_object(conn, "failed", error_message="Card account closed")

    assert process(settings, store_event(conn, "refund_failed", failed)) == "ok"

    refund = the_refund(conn)
    assert refund["status"] == "failed" and refund["error_message"] == "Card account closed"
    assert order_status(conn, pending_refund) == "completed"
    assert rows(conn, "SELECT 1 FROM licenses WHERE revoked_at IS NOT NULL") == []


@pytest.mark.parametrize("status", ["pending", "review"])
def test_a_non_terminal_refund_status_is_skipped(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID, status: str
) -> None:
    result = process(settings, store_event(conn, "refund_succeeded", refund_object(conn, status)))
    assert result == f"skipped: refund status {status}"
    assert the_refund(conn)["status"] == "pending"


def test_a_refund_event_without_a_refund_id_is_an_error(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    assert (
        process(settings, store_event(conn, "refund_succeeded", {"status": "succeeded"}))
        == "error: missing refund_id"
    )


def test_an_unknown_refund_is_retried_then_skipped(conn: psycopg.Connection[Any], settings: Settings) -> None:
    log_id = store_event(conn, "refund_succeeded", {"refund_id": "ref_" + "z" * 26, "status": "succeeded"})
    with pytest.raises(errors.UnknownObject):
        process(settings, log_id, final_attempt=False)
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '11 minutes'")
    assert process(settings, log_id, final_attempt=False) == "skipped: unknown refund"


def test_a_psp_refund_of_another_amount_is_posted_unallocated_with_a_discrepancy(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID
) -> None:
    partial = {**refund_object(conn), "amount": 500}
    assert process(settings, store_event(conn, "refund_succeeded", partial)) == "ok"

    assert (the_refund(conn)["status"], the_refund(conn)["amount"]) == ("succeeded", 500)
    assert balances(conn) == {SELLER_A: (1000, 0), SELLER_B: (600, 0)}  # which items? nobody knows
    assert account(conn, ledger.UNALLOCATED) == -500
    [found] = rows(conn, "SELECT kind, amount FROM discrepancies WHERE resolved_at IS NULL")
    assert found == {"kind": "refund_amount_mismatch", "amount": 500}
    assert rows(conn, "SELECT 1 FROM licenses WHERE revoked_at IS NOT NULL") == []
    assert_audit_ok(conn)


@pytest.mark.parametrize("shape", ["flat", "object"])
def test_refund_objects_in_the_other_shapes_dispatch_by_refund_id(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID, shape: str
) -> None:
    obj = refund_object(conn)
    body = obj if shape == "flat" else {"object": obj}
    assert process(settings, store(conn, json.dumps(body).encode())) == "ok"
    assert_refunded(conn, pending_refund)


def test_a_refund_after_a_payout_leaves_the_seller_a_debt(
    conn: psycopg.Connection[Any], settings: Settings, pending_refund: uuid.UUID
) -> None:
    paid_out(conn, pending_refund, SELLER_A, 1000)
    assert balances(conn) == {SELLER_A: (0, 0), SELLER_B: (0, 600)}

    assert process(settings, store_event(conn, "refund_succeeded", refund_object(conn))) == "ok"

    assert balances(conn) == {SELLER_A: (0, -1000), SELLER_B: (0, 0)}  # A owes what the buyer got back
    assert row(conn, "SELECT balance FROM seller_balances WHERE seller_id = %s", SELLER_A)["balance"] == -1000
    assert_audit_ok(conn)


def test_a_refund_succeeded_webhook_that_beats_phase_two_is_applied(
    receiver: str,
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
) -> None:
    order_id = completed_order(conn, settings, fake)

    def webhook_first(refund: dict[str, Any]) -> None:
        settle_refund(fake, refund["refund_id"], "succeeded")
        post_webhook(receiver, webhook_body("refund_succeeded", refund))
        wait_for(lambda: log_rows(conn)[-1]["processing_result"] != "queued")

    fake.before_reply["POST /refunds"] = webhook_first

    out = request(conn, client, order_id)

    assert out["status"] == "succeeded"
    assert log_rows(conn)[-1]["processing_result"] == "ok"
    assert the_refund(conn)["submitted_at"] is not None
    assert_refunded(conn, order_id)


# -- the CLI ----------------------------------------------------------------------------------------


def test_the_refund_command_prints_our_ids_and_sends_the_reason_and_note(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, psp_settings, fake)

    done = run_cli(
        "refund",
        str(order_id),
        "--by",
        str(BUYER),
        "--reason",
        "duplicate",
        "--note",
        "charged twice",
        settings=psp_settings,
    )

    assert done.returncode == 0, done.stderr
    refund = the_refund(conn)
    assert json.loads(done.stdout) == {
        "refund_id": str(refund["id"]),
        "hyperswitch_refund_id": refund["hyperswitch_refund_id"],
        "status": "pending",
    }
    assert refund["reason"] == "duplicate" and refund["note"] == "charged twice"
    [call] = fake.calls_to("POST", "/refunds")
    assert call.body["reason"] == "duplicate" and call.body["metadata"]["note"] == "charged twice"


def test_the_refund_command_on_a_rejection_prints_the_failed_refund_and_exits_1(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch
) -> None:
    order_id = completed_order(conn, psp_settings, fake)
    fake.fail_next("POST /refunds", Failure(status=400, code="IR_14", message="Charge already refunded"))

    done = run_cli("refund", str(order_id), "--by", str(BUYER), settings=psp_settings)

    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "failed"
    assert (
        done.stderr.strip()
        == "veza-worker refund: refund rejected by payment provider: Charge already refunded"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["refund", "not-a-uuid", "--by", str(BUYER)],
        ["refund", str(uuid.uuid4())],
        ["refund", str(uuid.uuid4()), "--by", str(BUYER), "--reason", "changed_mind"],
        ["refund", str(uuid.uuid4()), "--by", str(BUYER), "--note", "x" * 501],
    ],
    ids=["bad-uuid", "no-by", "bad-reason", "long-note"],
)
def test_refund_usage_errors_exit_2(psp_settings: Settings, args: list[str]) -> None:
    assert run_cli(*args, settings=psp_settings).returncode == 2


def test_commands_that_need_the_psp_say_it_is_not_configured(settings: Settings) -> None:
    for args in (["refund", str(uuid.uuid4()), "--by", str(BUYER)], ["confirm-order", str(uuid.uuid4())]):
        done = run_cli(*args, settings=settings, HYPERSWITCH_ENABLED="false")
        assert done.returncode == 1
        assert done.stderr.strip().endswith("payment provider not configured")
