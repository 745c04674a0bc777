"""Sellers get paid: holds, the payout sweep, every result and its postings, debts, ops' holds.

Orders are built as their completion commits them (order, transfers, the `order_paid` posting),
then aged past or inside their refund window. After every scenario `audit` finds nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest

from tests.factories import OwnConnections
from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payout, webhook_body
from tests.support import at_once, join, log_rows, make_order, process, row, rows, run_cli, store, store_event
from veza_worker import audit, errors, hyperswitch, ledger, ops, payouts, sweeps
from veza_worker.settings import Settings

SELLER_A, SELLER_B, SELLER_C = uuid.UUID(int=0xA1), uuid.UUID(int=0xB2), uuid.UUID(int=0xC3)


# -- building the scenario --------------------------------------------------------------------------


def paid_order(
    conn: psycopg.Connection[Any],
    items: list[tuple[uuid.UUID, int]],
    *,
    days_ago: float = 20,
    currency: str = "USD",
    payment_id: str | None = None,
) -> uuid.UUID:
    """An order paid `days_ago` days ago (refund window 14 days), as its completion commits it:
    the order completed, one pending transfer per seller, `world -total, seller:held +items`."""
    order_id = make_order(conn, items, currency=currency, status="completed", payment_id=payment_id)
    conn.execute(
        "UPDATE orders SET completed_at = now() - make_interval(secs => %s * 86400),"
        " refund_deadline = now() - make_interval(secs => %s * 86400) + interval '14 days' WHERE id = %s",
        [days_ago, days_ago, order_id],
    )
    by_seller: dict[uuid.UUID, int] = {}
    for seller_id, amount in items:
        by_seller[seller_id] = by_seller.get(seller_id, 0) + amount
    for seller_id, amount in by_seller.items():
        conn.execute(
            "INSERT INTO seller_transfers (order_id, seller_id, amount, currency) VALUES (%s, %s, %s, %s)",
            [order_id, seller_id, amount, currency],
        )
    total = sum(by_seller.values())
    with conn.transaction():
        ledger.post(conn, ledger.order_paid(order_id, currency, total, by_seller))
    return order_id


def payout_method(conn: psycopg.Connection[Any], fake: FakeHyperswitch, seller_id: uuid.UUID) -> str:
    """The seller saved a bank account in Hyperswitch; the host app wrote its row."""
    customer_id = hyperswitch.merchant_id("cus", seller_id)
    method = fake.save_payout_method(customer_id)
    conn.execute(
        "INSERT INTO seller_payout_methods (seller_id, customer_id, payout_method_id) VALUES (%s, %s, %s)",
        [seller_id, customer_id, method],
    )
    return method


def balances(conn: psycopg.Connection[Any], seller_id: uuid.UUID, currency: str = "USD") -> dict[str, int]:
    """The seller's accounts summed from the ledger itself; the read model must say the same."""
    found = rows(
        conn,
        "SELECT split_part(account, ':', 3) AS bucket, sum(amount)::bigint AS amount FROM ledger_entries"
        " WHERE account LIKE %s AND currency = %s GROUP BY 1",
        f"seller:{seller_id}:%",
        currency,
    )
    summed = {"held": 0, "available": 0, "in_transit": 0} | {r["bucket"]: r["amount"] for r in found}
    model = rows(
        conn,
        "SELECT held, available, in_transit FROM seller_balances WHERE seller_id = %s AND currency = %s",
        seller_id,
        currency,
    )
    assert model == ([summed] if found else []), "seller_balances differs from the ledger"
    return summed


def world(conn: psycopg.Connection[Any]) -> int:
    return int(
        row(conn, "SELECT coalesce(sum(amount), 0) AS w FROM ledger_entries WHERE account = 'world'")["w"]
    )


def postings(conn: psycopg.Connection[Any], payout_id: uuid.UUID) -> list[str]:
    found = rows(
        conn, "SELECT key FROM ledger_transactions WHERE payout_id = %s ORDER BY created_at, key", payout_id
    )
    return [r["key"].rsplit(":", 1)[1] for r in found]


def audit_ok(conn: psycopg.Connection[Any]) -> None:
    result = audit.run(conn)
    assert result["ok"], result["violations"]


def the_payout(conn: psycopg.Connection[Any], seller_id: uuid.UUID) -> dict[str, Any]:
    return row(conn, "SELECT * FROM payouts WHERE seller_id = %s", seller_id)


def deliver(
    conn: psycopg.Connection[Any], settings: Settings, event_type: str, obj: dict[str, Any]
) -> str | None:
    return process(settings, store_event(conn, event_type, dict(obj)))


@pytest.fixture
def pay(client: hyperswitch.Client, psp_settings: Settings) -> Any:
    """One pay-sellers sweep on its own connection, recorded like the clock's; its counts."""

    def run(**overrides: Any) -> dict[str, Any]:
        configured = replace(psp_settings, **overrides)
        [sweep] = [s for s in sweeps.SWEEPS if s.name == "pay_sellers"]
        with psycopg.connect(configured.database_url) as own:
            return sweeps.run(sweep, sweeps.Context(own, configured, client))

    return run


# -- holds ------------------------------------------------------------------------------------------


def test_earnings_stay_held_inside_the_window_under_an_open_dispute_or_a_refund_in_flight(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    payout_method(conn, fake, SELLER_A)
    due = paid_order(conn, [(SELLER_A, 1200), (SELLER_B, 300)], days_ago=15)
    inside = paid_order(conn, [(SELLER_A, 400)], days_ago=13)
    disputed = paid_order(conn, [(SELLER_A, 1500)], days_ago=20)
    conn.execute(
        "INSERT INTO disputes (id, payment_id, order_id, amount, currency, stage, status)"
        " VALUES ('dp_open', 'pay_x', %s, 1500, 'USD', 'dispute', 'dispute_opened')",
        [disputed],
    )
    conn.execute("UPDATE orders SET status = 'disputed' WHERE id = %s", [disputed])
    with conn.transaction():
        taken = {ledger.seller(SELLER_A, ledger.Bucket.HELD): 1500}
        ledger.post(
            conn, ledger.dispute_opened("dp_open", "USD", 1500, from_sellers=taken, order_id=disputed)
        )
    refunding = paid_order(conn, [(SELLER_A, 500)], days_ago=20)
    conn.execute(
        "INSERT INTO refunds (order_id, requested_by, amount, currency, hyperswitch_refund_id)"
        " VALUES (%s, %s, 500, 'USD', 'ref_in_flight')",
        [refunding, uuid.uuid4()],
    )

    counts = pay()

    assert counts["holds_released"] == 1
    released = rows(conn, "SELECT id FROM orders WHERE hold_released_at IS NOT NULL")
    assert [r["id"] for r in released] == [due]
    assert balances(conn, SELLER_A) == {"held": 400 + 500, "available": 0, "in_transit": 1200}
    assert balances(conn, SELLER_B) == {"held": 0, "available": 300, "in_transit": 0}  # no method: kept
    assert postings_of_order(conn, due) == ["paid", "released"]
    assert postings_of_order(conn, inside) == ["paid"]
    assert counts["no_payout_method"] == 0  # B has no method, but nothing worth a payout yet

    # The dispute is won (the money comes back, to held): the order is released at the next sweep.
    conn.execute("UPDATE disputes SET status = 'dispute_won', closed_at = now() WHERE id = 'dp_open'")
    conn.execute("UPDATE orders SET status = 'completed' WHERE id = %s", [disputed])
    with conn.transaction():
        back = {key: -amount for key, amount in ledger.entries_of(conn, "dispute:dp_open:opened").items()}
        ledger.post(conn, ledger.dispute_closed("dp_open", "USD", back, order_id=disputed))
    first = the_payout(conn, SELLER_A)
    paid = settle_payout(fake, first["hyperswitch_payout_id"], "success")
    assert deliver(conn, psp_settings, "payout_success", paid) == "ok"

    assert pay()["holds_released"] == 1
    assert postings_of_order(conn, disputed) == ["closed", "opened", "paid", "released"]
    assert balances(conn, SELLER_A) == {"held": 400 + 500, "available": 0, "in_transit": 1500}
    assert pay()["holds_released"] == 0  # once per order
    audit_ok(conn)


def postings_of_order(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> list[str]:
    found = rows(conn, "SELECT key FROM ledger_transactions WHERE order_id = %s ORDER BY key", order_id)
    return [r["key"].rsplit(":", 1)[1] for r in found]


# -- the sweep --------------------------------------------------------------------------------------


def test_one_payout_per_seller_and_currency_of_the_whole_available_with_the_contract_request(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, pay: Any
) -> None:
    method_a = payout_method(conn, fake, SELLER_A)
    payout_method(conn, fake, SELLER_B)
    below, held, no_method = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    payout_method(conn, fake, below)
    payout_method(conn, fake, held)
    first = paid_order(conn, [(SELLER_A, 1500), (SELLER_B, 2000)], days_ago=30)
    second = paid_order(conn, [(SELLER_A, 700), (below, 999), (held, 5000), (no_method, 5000)], days_ago=15)
    paid_order(conn, [(SELLER_A, 300)], days_ago=2)  # inside its window
    paid_order(conn, [(SELLER_B, 1000)], days_ago=20, currency="EUR")
    conn.execute("INSERT INTO seller_payout_holds (seller_id, reason) VALUES (%s, 'KYC review')", [held])

    counts = pay()

    assert counts == {
        "holds_released": 3,
        "created": 3,
        "submitted": 3,
        "rejected": 0,
        "ambiguous": 0,
        "unauthorized": 0,
        "skipped": 0,
        "errors": 0,
        "no_payout_method": 1,
        "held": 1,
    }
    made = {(p["seller_id"], p["currency"]): p for p in rows(conn, "SELECT * FROM payouts")}
    assert {key: p["amount"] for key, p in made.items()} == {
        (SELLER_A, "USD"): 2200,
        (SELLER_B, "USD"): 2000,
        (SELLER_B, "EUR"): 1000,
    }
    payout = made[(SELLER_A, "USD")]
    [call] = [c for c in fake.calls_to("POST", "/payouts/create") if c.body["amount"] == 2200]
    assert call.body == {
        "amount": 2200,
        "currency": "USD",
        "customer_id": hyperswitch.merchant_id("cus", SELLER_A),
        "payout_method_id": method_a,
        "payout_type": "bank",
        "confirm": True,
        "auto_fulfill": True,
        "merchant_order_reference_id": hyperswitch.merchant_id("po", payout["id"]),
        "metadata": {"seller_id": str(SELLER_A), "payout_id": str(payout["id"])},
    }
    assert call.headers["idempotency-key"] == str(payout["id"])
    assert payout["merchant_reference"] == "po_" + hyperswitch.merchant_id("pay", payout["id"])[4:]
    assert (payout["status"], payout["submitted_at"] is not None) == ("pending", True)
    assert payout["hyperswitch_payout_id"] in fake.payouts
    assert balances(conn, SELLER_A) == {"held": 300, "available": 0, "in_transit": 2200}
    assert balances(conn, below) == {"held": 0, "available": 999, "in_transit": 0}
    assert balances(conn, held) == {"held": 0, "available": 5000, "in_transit": 0}
    carried = rows(
        conn, "SELECT order_id FROM seller_transfers WHERE payout_id = %s ORDER BY order_id", payout["id"]
    )
    assert {r["order_id"] for r in carried} == {first, second}
    assert postings(conn, payout["id"]) == ["created"]

    again = pay()  # a payout in flight: nothing more for them
    assert (again["created"], len(fake.calls_to("POST", "/payouts/create"))) == (0, 3)
    audit_ok(conn)


def test_two_sweeps_at_once_pay_each_seller_once(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    psp_settings: Settings,
    own_connections: OwnConnections,
) -> None:
    sellers = [uuid.uuid4() for _ in range(30)]
    for seller_id in sellers:
        payout_method(conn, fake, seller_id)
    for start in range(0, 30, 3):
        paid_order(conn, [(s, 1000 + i) for i, s in enumerate(sellers[start : start + 3])], days_ago=20)
    fake.before_reply["POST /payouts/create"] = lambda _payout: time.sleep(0.01)  # more overlap
    results: list[dict[str, int]] = []

    def sweep() -> None:
        with own_connections() as (own, client):
            results.append(payouts.pay_sellers(own, client, psp_settings))

    at_once(sweep, sweep)

    assert sum(r["created"] for r in results) == 30
    assert sum(r["holds_released"] for r in results) == 10
    assert len(fake.payouts) == 30 == len(fake.calls_to("POST", "/payouts/create"))
    assert sorted(p["seller_id"] for p in rows(conn, "SELECT seller_id FROM payouts")) == sorted(sellers)
    assert {balances(conn, s)["available"] for s in sellers} == {0}
    audit_ok(conn)


# -- results ----------------------------------------------------------------------------------------


def one_payout(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, pay: Any, amount: int = 2000
) -> tuple[dict[str, Any], uuid.UUID]:
    """SELLER_A's payout of `amount`, submitted to the PSP and pending there; its order."""
    payout_method(conn, fake, SELLER_A)
    order_id = paid_order(conn, [(SELLER_A, amount)], days_ago=20)
    assert pay()["submitted"] == 1
    return the_payout(conn, SELLER_A), order_id


# A payout the bank refused: failed, its money available again, its transfer pending for the next one.
FAILED_BACK_TO_AVAILABLE = (
    "failed",
    ["created", "failed"],
    {"available": 2000, "in_transit": 0},
    ("pending", False),
)


@pytest.mark.parametrize(
    ("psp_statuses", "status", "steps", "accounts", "transfer"),
    [
        (["success"], "paid", ["created", "paid"], {"available": 0, "in_transit": 0}, ("completed", True)),
        *[
            ([psp_status], *FAILED_BACK_TO_AVAILABLE)
            for psp_status in ("failed", "cancelled", "expired", "ineligible")
        ],
        (
            ["success", "reversed"],
            "reversed",
            ["created", "paid", "reversed"],
            {"available": 2000, "in_transit": 0},
            ("pending", False),
        ),
        (  # the final event first: every step before it, the money back once
            ["reversed"],
            "reversed",
            ["created", "paid", "reversed"],
            {"available": 2000, "in_transit": 0},
            ("pending", False),
        ),
    ],
    ids=["paid", "failed", "cancelled", "expired", "ineligible", "reversed_after_paid", "reversed_first"],
)
def test_each_result_moves_the_money_once_and_replays_change_nothing(
    conn: psycopg.Connection[Any],
    fake: FakeHyperswitch,
    psp_settings: Settings,
    pay: Any,
    psp_statuses: list[str],
    status: str,
    steps: list[str],
    accounts: dict[str, int],
    transfer: tuple[str, bool],
) -> None:
    payout, order_id = one_payout(conn, fake, pay)
    world_before = world(conn)
    bodies = []
    for psp_status in psp_statuses:
        obj = dict(settle_payout(fake, payout["hyperswitch_payout_id"], psp_status))
        body = webhook_body(f"payout_{'failed' if psp_status == 'ineligible' else psp_status}", obj)
        assert process(psp_settings, store(conn, body)) == "ok"
        bodies.append(body)

    def state() -> tuple[Any, ...]:
        final = the_payout(conn, SELLER_A)
        moved = world(conn) - world_before
        transfers = rows(conn, "SELECT status, payout_id FROM seller_transfers WHERE order_id = %s", order_id)
        return final["status"], postings(conn, payout["id"]), balances(conn, SELLER_A), moved, transfers

    settled = state()
    assert settled[0] == status and settled[1] == steps
    assert settled[2] == {"held": 0, **accounts}
    assert settled[3] == {"paid": 2000, "failed": 0, "reversed": 0}[status]  # what left for the bank
    [(transfer_status, payout_id)] = [(t["status"], t["payout_id"]) for t in settled[4]]
    assert (transfer_status, payout_id is not None) == transfer
    final = the_payout(conn, SELLER_A)
    assert (final["paid_at"] is not None) == (status in ("paid", "reversed"))
    assert (final["failed_at"] is not None) == (status == "failed")
    assert (final["reversed_at"] is not None) == (status == "reversed")
    if status != "paid":
        assert final["error_message"]

    for body in bodies:  # Hyperswitch's retries: the identical body, three more times each
        for _ in range(3):
            assert process(psp_settings, store(conn, body)) == "skipped: duplicate event"
    for late in ("initiated", "pending", "success", "failed"):  # fresh events, any order, any status
        result = deliver(
            conn,
            psp_settings,
            "payout_processing",
            {**fake.payouts[payout["hyperswitch_payout_id"]], "status": late},
        )
        assert result is not None and result.startswith("skipped")
    assert state()[:4] == settled[:4]
    audit_ok(conn)


def test_a_payout_settled_at_the_psp_arrives_by_its_signed_webhook_through_the_receiver_and_a_worker(
    conn: psycopg.Connection[Any],
    psp: tuple[str, FakeHyperswitch],
    settings: Settings,
    receiver: str,
    broker: dramatiq.Broker,
    worker: dramatiq.Worker,
    pay: Any,
) -> None:
    psp_url, fake = psp
    payout, _order = one_payout(conn, fake, pay)
    fake.webhook_url, fake.webhook_secret = f"{receiver}/webhooks/hyperswitch", settings.webhook_secrets[0]

    for status in ("success", "reversed"):
        sent = httpx.post(f"{psp_url}/_fake/payouts/{payout['hyperswitch_payout_id']}/{status}", timeout=30)
        assert sent.json()["webhook_status"] == 200
        join(broker)
    silent = httpx.post(f"{psp_url}/_fake/payouts/{payout['hyperswitch_payout_id']}/failed?webhook=false")
    assert silent.json()["webhook_status"] is None

    delivered = [(r["event_type"], r["processing_result"]) for r in log_rows(conn)]
    assert delivered == [("payout_success", "ok"), ("payout_reversed", "ok")]
    assert json.loads(log_rows(conn)[0]["payload"])["content"]["type"] == "payout_details"
    assert the_payout(conn, SELLER_A)["status"] == "reversed"
    assert balances(conn, SELLER_A) == {"held": 0, "available": 2000, "in_transit": 0}
    audit_ok(conn)


def test_a_paid_payout_reported_failed_later_stays_paid_and_asks_a_human(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    payout, _order = one_payout(conn, fake, pay)
    psp_id = payout["hyperswitch_payout_id"]
    assert deliver(conn, psp_settings, "payout_success", settle_payout(fake, psp_id, "success")) == "ok"

    result = deliver(conn, psp_settings, "payout_failed", settle_payout(fake, psp_id, "failed"))

    assert result == "skipped: payout already paid"
    assert the_payout(conn, SELLER_A)["status"] == "paid"
    [human] = rows(conn, "SELECT kind, payout_id FROM discrepancies WHERE resolved_at IS NULL")
    assert (human["kind"], human["payout_id"]) == ("payout_failed_after_paid", payout["id"])
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 0}
    audit_ok(conn)


def test_a_definitive_rejection_fails_the_payout_and_gives_the_money_back(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, pay: Any
) -> None:
    payout_method(conn, fake, SELLER_A)
    order_id = paid_order(conn, [(SELLER_A, 2500)], days_ago=20)
    fake.fail_next("POST /payouts/create", Failure(400, "IR_16", "payout method expired"))

    counts = pay()

    assert (counts["created"], counts["rejected"]) == (1, 1)
    payout = the_payout(conn, SELLER_A)
    assert (payout["status"], payout["hyperswitch_payout_id"]) == ("failed", None)
    assert "payout method expired" in payout["error_message"]
    assert postings(conn, payout["id"]) == ["created", "failed"]
    assert balances(conn, SELLER_A) == {"held": 0, "available": 2500, "in_transit": 0}
    [transfer] = rows(conn, "SELECT status, payout_id FROM seller_transfers WHERE order_id = %s", order_id)
    assert transfer == {"status": "pending", "payout_id": None}
    audit_ok(conn)

    # The next sweep tries again, with no waiting behind a payout delay (polar#12103).
    assert pay()["submitted"] == 1
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 2500}
    audit_ok(conn)


def test_a_success_answered_at_once_by_the_create_is_applied_and_its_webhook_is_a_no_op(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    fake.payout_outcomes.append("success")
    payout, _order = one_payout(conn, fake, pay)

    assert payout["status"] == "paid"
    webhook = fake.payouts[payout["hyperswitch_payout_id"]]
    assert deliver(conn, psp_settings, "payout_success", webhook) == "skipped: payout already paid"
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 0}
    audit_ok(conn)


def test_a_webhook_faster_than_the_create_answer_finds_the_payout_by_its_reference(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    results: list[str | None] = []

    def bank_answers_first(obj: dict[str, Any]) -> None:
        settle_payout(fake, obj["payout_id"], "success")
        results.append(deliver(conn, psp_settings, "payout_success", obj))

    fake.before_reply["POST /payouts/create"] = bank_answers_first
    payout, _order = one_payout(conn, fake, pay)

    assert results == ["ok"]
    assert (payout["status"], payout["hyperswitch_payout_id"]) == ("paid", next(iter(fake.payouts)))
    assert postings(conn, payout["id"]) == ["created", "paid"]
    audit_ok(conn)


def test_a_payout_event_for_a_payout_we_never_made_is_retried_then_skipped(
    conn: psycopg.Connection[Any], psp_settings: Settings
) -> None:
    stranger = {"payout_id": "payout_" + "x" * 23, "status": "success", "amount": 100, "currency": "USD"}
    log_id = store_event(conn, "payout_success", stranger)

    with pytest.raises(errors.UnknownObject):
        process(psp_settings, log_id, final_attempt=False)  # our own commit may be late: retried
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '11 minutes'")

    assert process(psp_settings, log_id, final_attempt=False) == "skipped: unknown payout"


# -- ambiguity, crashes and the reconciler ----------------------------------------------------------


def stuck(conn: psycopg.Connection[Any]) -> None:
    """Past RECONCILE_PAYOUT_STUCK_AFTER."""
    conn.execute("UPDATE payouts SET created_at = created_at - interval '1 hour'")
    conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")


def test_an_ambiguous_create_is_found_by_its_reference_never_sent_twice(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any, client: Any
) -> None:
    from veza_worker import reconcile

    payout_method(conn, fake, SELLER_A)
    paid_order(conn, [(SELLER_A, 1800)], days_ago=20)
    fake.fail_next("POST /payouts/create", Failure(504, "HE_00", "gateway timeout", acted=True))

    with pytest.raises(errors.PaymentProviderUnavailable, match="will be reconciled") as raised:
        pay()
    assert raised.value.output is not None and raised.value.output["ambiguous"] == 1
    payout = the_payout(conn, SELLER_A)
    assert (payout["status"], payout["hyperswitch_payout_id"], payout["submitted_at"]) == (
        "pending",
        None,
        None,
    )
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 1800}

    assert pay()["created"] == 0 and pay()["created"] == 0  # two more sweeps: it is in flight
    assert len(fake.calls_to("POST", "/payouts/create")) == 1
    assert reconcile.tick(conn, client, psp_settings)["payouts"] == {"checked": 0}  # not stuck yet

    stuck(conn)
    counts = reconcile.tick(conn, client, psp_settings)

    assert counts["payouts"] == {"checked": 1, "adopted": 1}
    [listed] = fake.calls_to("POST", "/payouts/list")
    assert listed.body == {"merchant_order_reference_id": payout["merchant_reference"], "limit": 20}
    [(psp_id, at_psp)] = fake.payouts.items()
    assert the_payout(conn, SELLER_A)["hyperswitch_payout_id"] == psp_id
    assert len(fake.calls_to("POST", "/payouts/create")) == 1  # never sent again

    settle_payout(fake, psp_id, "success")  # its webhook is lost: the next tick reads it
    stuck(conn)
    assert reconcile.tick(conn, client, psp_settings)["payouts"] == {"checked": 1, "settled": 1}
    assert [c.query for c in fake.calls_to("GET", f"/payouts/{psp_id}")] == ["force_sync=true"]
    assert the_payout(conn, SELLER_A)["status"] == "paid"
    synthetic = row(conn, "SELECT event_type, user_agent, processing_result FROM hyperswitch_webhook_log")
    assert synthetic == {
        "event_type": "payout_success",
        "user_agent": "veza-worker-reconciler",
        "processing_result": "ok",
    }
    assert deliver(conn, psp_settings, "payout_success", at_psp) == "skipped: payout already paid"
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 0}
    audit_ok(conn)


def test_a_payout_that_never_reached_the_psp_is_sent_by_the_reconciler_once(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any, client: Any
) -> None:
    from veza_worker import reconcile

    payout_method(conn, fake, SELLER_A)
    paid_order(conn, [(SELLER_A, 1800)], days_ago=20)
    fake.fail_next("POST /payouts/create", Failure(503, "HE_00", "down"))  # the PSP did nothing
    with pytest.raises(errors.PaymentProviderUnavailable):
        pay()
    assert fake.payouts == {}

    stuck(conn)
    assert reconcile.tick(conn, client, psp_settings)["payouts"] == {"checked": 1, "resent": 1}
    stuck(conn)
    assert reconcile.tick(conn, client, psp_settings)["payouts"] == {"checked": 1, "unchanged": 1}

    [(psp_id, _obj)] = fake.payouts.items()  # one payout at the PSP, found by GET the second time
    payout = the_payout(conn, SELLER_A)
    assert (payout["status"], payout["hyperswitch_payout_id"]) == ("pending", psp_id)
    assert len(fake.calls_to("POST", "/payouts/list")) == 1
    audit_ok(conn)


def test_a_psp_outage_stops_the_sweep_after_three_ambiguous_creates(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, pay: Any
) -> None:
    sellers = [uuid.uuid4() for _ in range(6)]
    for seller_id in sellers:
        payout_method(conn, fake, seller_id)
    paid_order(conn, [(seller_id, 1000) for seller_id in sellers], days_ago=20)
    for _ in range(6):
        fake.fail_next("POST /payouts/create", Failure(503, "HE_00", "down"))

    with pytest.raises(errors.PaymentProviderUnavailable) as raised:
        pay()

    assert raised.value.output is not None
    assert (raised.value.output["created"], raised.value.output["ambiguous"]) == (3, 3)
    assert len(rows(conn, "SELECT 1 FROM payouts WHERE status = 'pending' AND submitted_at IS NULL")) == 3
    assert sum(balances(conn, s)["available"] for s in sellers) == 3000  # the others wait, untouched
    audit_ok(conn)


def test_the_canary_keeps_a_misconfigured_psp_from_getting_a_second_payout(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any, client: Any
) -> None:
    from veza_worker import reconcile

    payout_method(conn, fake, SELLER_A)
    paid_order(conn, [(SELLER_A, 1800)], days_ago=20, payment_id="pay_" + "c" * 26)  # unknown to this PSP
    fake.fail_next("POST /payouts/create", Failure(504, "HE_00", "gateway timeout", acted=True))
    with pytest.raises(errors.PaymentProviderUnavailable):
        pay()
    fake.payouts.clear()  # as another merchant account would answer: none of ours

    stuck(conn)
    counts = reconcile.tick(conn, client, psp_settings)

    assert counts["payouts"] == {"checked": 1, "psp_misconfigured": 1}
    assert len(fake.calls_to("POST", "/payouts/create")) == 1
    assert the_payout(conn, SELLER_A)["hyperswitch_payout_id"] is None


def test_a_401_on_create_leaves_the_payout_pending_exits_1_and_names_the_api_key(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, client: Any
) -> None:
    from veza_worker import reconcile

    for seller_id in (SELLER_A, SELLER_B):
        payout_method(conn, fake, seller_id)
    paid_order(conn, [(SELLER_A, 1800), (SELLER_B, 1900)], days_ago=20)

    done = run_cli("-v", "pay-sellers", settings=psp_settings, HYPERSWITCH_API_KEY="snd_revoked")

    assert done.returncode == 1
    assert (
        done.stderr.splitlines()[-1]
        == "veza-worker pay-sellers: payment provider unavailable, will be reconciled"
    )
    errors_logged = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors_logged) == 1 and "HYPERSWITCH_API_KEY" in errors_logged[0]
    assert "snd_revoked" not in done.stderr
    printed = json.loads(done.stdout)
    assert (printed["created"], printed["unauthorized"]) == (1, 1)  # the sweep stopped at the first
    [payout] = rows(conn, "SELECT status, hyperswitch_payout_id, seller_id, amount FROM payouts")
    assert (payout["status"], payout["hyperswitch_payout_id"]) == ("pending", None)
    assert balances(conn, payout["seller_id"])["in_transit"] == payout["amount"]
    audit_ok(conn)

    stuck(conn)  # the key is fixed: the reconciler finds nothing under the reference and sends it
    assert reconcile.tick(conn, client, psp_settings)["payouts"] == {"checked": 1, "resent": 1}
    assert len(fake.payouts) == 1


# -- debts ------------------------------------------------------------------------------------------


def test_a_refund_after_a_payout_is_a_debt_the_next_earnings_pay_before_the_next_payout(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    payout, first_order = one_payout(conn, fake, pay, amount=3000)
    deliver(
        conn, psp_settings, "payout_success", settle_payout(fake, payout["hyperswitch_payout_id"], "success")
    )
    refund_id = uuid.uuid4()  # the buyer got the item's 3,000 back at the PSP, after the seller was paid
    conn.execute(
        "INSERT INTO refunds (id, order_id, amount, currency, hyperswitch_refund_id, status, note)"
        " VALUES (%s, %s, 3000, 'USD', 'ref_after_payout', 'succeeded', 'made at the payment provider')",
        [refund_id, first_order],
    )
    conn.execute(
        "INSERT INTO refund_items (refund_id, order_item_id)"
        " SELECT %s, id FROM order_items WHERE order_id = %s",
        [refund_id, first_order],
    )
    with conn.transaction():
        taken = {ledger.seller(SELLER_A, ledger.Bucket.AVAILABLE): 3000}
        ledger.post(
            conn, ledger.refund_succeeded(refund_id, "USD", 3000, from_sellers=taken, order_id=first_order)
        )
    assert balances(conn, SELLER_A) == {"held": 0, "available": -3000, "in_transit": 0}

    assert pay()["created"] == 0  # a debt: nothing to pay
    second_order = paid_order(conn, [(SELLER_A, 4500)], days_ago=15)
    counts = pay()

    assert counts["created"] == 1
    netted = rows(conn, "SELECT id, amount FROM payouts WHERE status = 'pending'")
    assert [p["amount"] for p in netted] == [1500]
    assert balances(conn, SELLER_A) == {"held": 0, "available": 0, "in_transit": 1500}
    transfers = rows(
        conn, "SELECT order_id, status, payout_id FROM seller_transfers ORDER BY status, order_id"
    )
    assert transfers == [
        {"order_id": first_order, "status": "completed", "payout_id": payout["id"]},  # never rewritten
        {"order_id": second_order, "status": "pending", "payout_id": netted[0]["id"]},
    ]
    audit_ok(conn)


def shown_id(shown: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(shown["payout_id"])


# -- ops --------------------------------------------------------------------------------------------


def test_a_held_seller_is_never_paid_until_released_and_ops_see_it(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings
) -> None:
    payout_method(conn, fake, SELLER_A)
    paid_order(conn, [(SELLER_A, 1200)], days_ago=20)

    held = run_cli("hold-payouts", str(SELLER_A), "--reason", "KYC review", settings=psp_settings)
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout) | {"held_at": None} == {
        "held": True,
        "seller_id": str(SELLER_A),
        "reason": "KYC review",
        "held_at": None,
    }
    again = run_cli("hold-payouts", str(SELLER_A), "--reason", "twice", settings=psp_settings)
    assert again.returncode == 1 and "already held" in again.stderr
    assert run_cli("hold-payouts", str(SELLER_A), "--reason", " ", settings=psp_settings).returncode == 2

    swept = run_cli("pay-sellers", settings=psp_settings)
    assert swept.returncode == 0, swept.stderr
    assert (json.loads(swept.stdout)["created"], json.loads(swept.stdout)["held"]) == (0, 1)
    with psycopg.connect(psp_settings.database_url) as own:
        document, _healthy = ops.status(own, psp_settings)
    assert document["payouts"] == {
        "held_sellers": [SELLER_A],
        "in_transit": {},
        "failed_last_day": 0,
        "sellers_without_payout_method": 0,
    }

    assert run_cli("release-payouts", str(SELLER_A), settings=psp_settings).returncode == 0
    assert run_cli("release-payouts", str(SELLER_A), settings=psp_settings).returncode == 1
    assert json.loads(run_cli("pay-sellers", settings=psp_settings).stdout)["submitted"] == 1

    listed = run_cli("payouts", "--seller", str(SELLER_A), "--status", "pending", settings=psp_settings)
    [shown] = json.loads(listed.stdout)
    assert (shown["seller_id"], shown["amount"], shown["status"]) == (str(SELLER_A), 1200, "pending")
    assert json.loads(run_cli("payouts", "--status", "paid", settings=psp_settings).stdout) == []
    assert run_cli("payouts", "--status", "lost", settings=psp_settings).returncode == 2
    with psycopg.connect(psp_settings.database_url) as own:  # what the console calls
        assert [p["payout_id"] for p in payouts.listing(own, seller_id=SELLER_A)] == [shown_id(shown)]
        with pytest.raises(errors.DomainError, match="unknown payout status"):
            payouts.listing(own, status="lost")
    audit_ok(conn)


def test_status_and_metrics_show_money_in_transit_and_failures_of_the_last_day(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families

    from veza_worker import metrics

    def counted(status: str) -> float:
        value = prometheus_client.REGISTRY.get_sample_value("veza_payouts_total", {"status": status})
        return value or 0.0

    before = {status: counted(status) for status in ("pending", "failed")}
    for seller_id in (SELLER_A, SELLER_B, SELLER_C):
        payout_method(conn, fake, seller_id)
    paid_order(conn, [(SELLER_A, 1200), (SELLER_B, 3400), (SELLER_C, 5000)], days_ago=20)
    paid_order(conn, [(uuid.uuid4(), 4000)], days_ago=20)  # a seller without a payout method
    pay()
    failed = the_payout(conn, SELLER_C)
    deliver(
        conn, psp_settings, "payout_failed", settle_payout(fake, failed["hyperswitch_payout_id"], "failed")
    )
    conn.execute("UPDATE payouts SET created_at = now() - interval '4 days' WHERE seller_id = %s", [SELLER_A])

    with psycopg.connect(psp_settings.database_url) as own:
        document, healthy = ops.status(own, psp_settings)
        gauges = ops.gauges(own, psp_settings)

    assert document["payouts"] == {
        "held_sellers": [],
        "in_transit": {"USD": 1200 + 3400},
        "failed_last_day": 1,
        "sellers_without_payout_method": 1,
    }
    assert healthy
    text = metrics.render(gauges).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("veza_payouts_in_transit", (("currency", "USD"),))] == 4600
    assert values[("veza_payouts_oldest_in_transit_seconds", ())] > 4 * 86400 - 60
    assert values[("veza_payouts_failed_last_day", ())] == 1
    assert values[("veza_sellers_without_payout_method", ())] == 1
    assert {status: counted(status) - n for status, n in before.items()} == {"pending": 3, "failed": 1}
    assert values[("veza_stuck_rows", (("phase", "payouts"),))] == 1
    audit_ok(conn)


def test_the_audit_finds_a_payout_whose_money_came_back_twice(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, psp_settings: Settings, pay: Any
) -> None:
    payout, _order = one_payout(conn, fake, pay)
    deliver(
        conn, psp_settings, "payout_failed", settle_payout(fake, payout["hyperswitch_payout_id"], "failed")
    )
    with conn.transaction():  # polar#9666: a second release of the same funds, under another key
        twice = ledger.payout_failed(payout["id"], SELLER_A, "USD", 2000)
        ledger.post(conn, replace(twice, key=f"payout:{payout['id']}:failed-again"))

    result = audit.run(conn)

    assert not result["ok"]
    found = {v["check"] for v in result["violations"]}
    assert found == {"in_transit"}, result["violations"]
