"""Factories more than one test module builds its scenarios from: plans, orders and their payments.

A test module keeps the helpers only it uses; whatever two modules share lives here (rows) or in
tests/support.py (constants, servers, reads), never in a test module: no test imports another one
(tests/test_layout.py checks it).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

import psycopg

from tests.fake_hyperswitch import FakeHyperswitch, dispute, settle_payment, settle_refund, timestamp
from tests.support import PSP_API_KEY, make_order, process, row, rows, store_event
from veza_worker import audit, automatic_refunds, hyperswitch, ledger, payouts, refunds
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands

BUYER = uuid.UUID(int=0xB0B)
SELLER_A, SELLER_B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
SELLER = uuid.uuid4()  # the one seller of a stuck order
REFUND_WINDOW = timedelta(days=14)
DAY = timedelta(days=1)


def make_plan(
    conn: psycopg.Connection[Any],
    amount: int,
    *,
    interval: str = "month",
    trial_days: int = 0,
    currency: str = "EUR",
) -> uuid.UUID:
    plan_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO subscription_plans (id, name, amount, currency, interval, trial_days)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        [plan_id, f"plan {amount}", amount, currency, interval, trial_days],
    )
    return plan_id


# -- a subscription paid up, and time moved -----------------------------------------------------------


def paid_up(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
    plan_id: uuid.UUID,
    user: uuid.UUID | None = None,
) -> uuid.UUID:
    """A subscription whose first payment the customer completed on-session: active, method saved."""
    out = commands.subscribe(conn, client, user or uuid.uuid4(), plan_id)
    payment = settle_payment(fake, out["payment_id"], "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", payment)) == "ok"
    return uuid.UUID(out["subscription_id"])


def travel(conn: psycopg.Connection[Any], subscription_id: uuid.UUID, by: timedelta) -> None:
    """Move a subscription `by` into the future: every time it and its invoices hold goes back."""
    conn.execute(
        "UPDATE user_subscriptions SET current_period_start = current_period_start - %(by)s,"
        " current_period_end = current_period_end - %(by)s, trial_ends_at = trial_ends_at - %(by)s,"
        " past_due_since = past_due_since - %(by)s, created_at = created_at - %(by)s WHERE id = %(id)s",
        {"by": by, "id": subscription_id},
    )
    conn.execute(
        "UPDATE subscription_invoices SET created_at = created_at - %(by)s,"
        " period_start = period_start - %(by)s, period_end = period_end - %(by)s,"
        " submitted_at = submitted_at - %(by)s WHERE subscription_id = %(id)s",
        {"by": by, "id": subscription_id},
    )


def to_period_end(
    conn: psycopg.Connection[Any], subscription_id: uuid.UUID, past: timedelta = timedelta(hours=1)
) -> None:
    """Travel to just past the current period's end."""
    left = row(
        conn,
        "SELECT current_period_end - now() AS left FROM user_subscriptions WHERE id = %s",
        subscription_id,
    )
    travel(conn, subscription_id, left["left"] + past)


# -- a completed order of three items, two sellers ---------------------------------------------------


def three_items(conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch) -> uuid.UUID:
    """A completed order: two items from seller A (500, 300), one from seller B (200)."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(
        conn, [(SELLER_A, 500), (SELLER_A, 300), (SELLER_B, 200)], buyer_id=BUYER, payment_id=payment_id
    )
    paid = {
        "payment_id": payment_id,
        "status": "succeeded",
        "amount": 1000,
        "currency": "USD",
        "created": timestamp(),
    }
    fake.payments[payment_id] = {**paid, "client_secret": "cs", "metadata": {}}
    settle_payment(fake, payment_id, "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", fake.payments[payment_id])) == "ok"
    return order_id


def paid_refunded_disputed(
    conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch, client: hyperswitch.Client
) -> dict[str, Any]:
    """`three_items`, then seller B's item refunded (the PSP settles it), then the rest, seller A's
    two items, disputed (800): each step applied by its handler, one after the other. The ids."""
    order_id = three_items(conn, settings, fake)
    b200 = row(conn, "SELECT id FROM order_items WHERE order_id = %s AND seller_id = %s", order_id, SELLER_B)[
        "id"
    ]
    out = refunds.request(conn, client, order_id, BUYER, items=[b200], refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, out)
    opened = open_dispute(conn, settings, fake, order_id, amount="800")
    return {
        "order_id": order_id,
        "payment_id": payment_of(conn, order_id),
        "buyer_id": BUYER,
        "seller_a": SELLER_A,
        "seller_b": SELLER_B,
        "refund_id": uuid.UUID(out["refund_id"]),
        "hyperswitch_refund_id": out["hyperswitch_refund_id"],
        "dispute_id": opened["dispute_id"],
    }


def psp_settles(
    conn: psycopg.Connection[Any],
    settings: Settings,
    fake: FakeHyperswitch,
    out: dict[str, Any],
    outcome: str = "succeeded",
) -> int:
    """The bank answers; its webhook is applied. Returns the log id (to replay it)."""
    refund = settle_refund(
        fake, out["hyperswitch_refund_id"], outcome, None if outcome == "succeeded" else "declined"
    )
    log_id = store_event(conn, f"refund_{outcome}", dict(refund))
    assert process(settings, log_id) == "ok"
    return log_id


def state(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> dict[str, Any]:
    """Everything a refund or a dispute moves, in one comparable value."""
    order = row(conn, "SELECT status, refunded_amount FROM orders WHERE id = %s", order_id)
    return {
        "order": (order["status"], order["refunded_amount"]),
        "balances": {
            r["seller_id"]: r["balance"] for r in rows(conn, "SELECT seller_id, balance FROM seller_balances")
        },
        "live_licenses": sorted(
            r["amount"]
            for r in rows(
                conn,
                "SELECT i.amount FROM licenses l JOIN order_items i ON i.id = l.order_item_id"
                " WHERE l.order_id = %s AND l.revoked_at IS NULL",
                order_id,
            )
        ),
        "transfers": sorted(
            ((r["seller_id"] == SELLER_A and "A") or "B", r["status"], r["amount"])
            for r in rows(
                conn, "SELECT seller_id, status, amount FROM seller_transfers WHERE order_id = %s", order_id
            )
        ),
    }


# -- an order stuck waiting for its webhook ----------------------------------------------------------


def stuck_order(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    psp_status: str | None,
    *,
    age: str = "1 hour",
) -> tuple[uuid.UUID, str]:
    """A pending order that reached the PSP `age` ago; the PSP's payment is now `psp_status`."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    order_id = make_order(conn, [(SELLER, 700), (SELLER, 300)], payment_id=payment_id)
    conn.execute("UPDATE orders SET created_at = now() - %s::interval WHERE id = %s", [age, order_id])
    if psp_status is not None:
        client.create_payment(
            payment_id=payment_id, amount=1000, currency="USD", idempotency_key="k", metadata={}
        )
        if psp_status != "requires_payment_method":
            settle_payment(fake, payment_id, psp_status)
    return order_id, payment_id


def order_status(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> str:
    return str(row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"])


# -- a second process, in a thread ---------------------------------------------------------------------


Tick = Callable[..., dict[str, dict[str, Any]]]  # the `tick` fixture: `tick(**settings_overrides)`
OwnConnections = Callable[[], AbstractContextManager[tuple[psycopg.Connection[Any], hyperswitch.Client]]]


@contextmanager
def own_connections(
    database_url: str, psp_url: str
) -> Iterator[tuple[psycopg.Connection[Any], hyperswitch.Client]]:
    """A connection and a PSP client of a thread's own, as a second worker or sweep process has."""
    client = hyperswitch.Client(psp_url, PSP_API_KEY)
    try:
        with psycopg.connect(database_url) as conn:
            yield conn, client
    finally:
        client.close()


# -- the ledger ---------------------------------------------------------------------------------------


def paid_out(conn: psycopg.Connection[Any], order_id: uuid.UUID, seller_id: uuid.UUID, amount: int) -> None:
    """The order's hold released and `amount` of the seller's available money paid to their bank."""
    with conn.transaction():
        order = row(conn, "SELECT currency FROM orders WHERE id = %s", order_id)
        held = ledger.order_held(conn, order_id)
        ledger.post(conn, ledger.hold_released(order_id, order["currency"], held))
        conn.execute("UPDATE orders SET hold_released_at = now() WHERE id = %s", [order_id])
        payout = {ledger.seller(seller_id, ledger.Bucket.AVAILABLE): -amount, ledger.WORLD: amount}
        key = f"correction:{uuid.uuid4()}"
        ledger.post(conn, ledger.Posting(key, ledger.Kind.CORRECTION, order["currency"], payout))


def balances(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, tuple[int, int]]:
    """Each seller's (held, available)."""
    query = "SELECT seller_id, held, available FROM seller_balances"
    return {r["seller_id"]: (r["held"], r["available"]) for r in rows(conn, query)}


def account(conn: psycopg.Connection[Any], name: str) -> int:
    """An account's balance: the sum of its entries."""
    return int(
        row(conn, "SELECT coalesce(sum(amount), 0) AS s FROM ledger_entries WHERE account = %s", name)["s"]
    )


def assert_audit_ok(conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(conn.info.dsn) as own:
        assert audit.run(own)["violations"] == []


# -- disputes -----------------------------------------------------------------------------------------


def deliver(
    conn: psycopg.Connection[Any], settings: Settings, obj: dict[str, Any], status: str | None = None
) -> str | None:
    """A dispute object's webhook, stored and applied."""
    return process(settings, store_event(conn, status or obj["dispute_status"], dict(obj)))


def open_dispute(
    conn: psycopg.Connection[Any],
    settings: Settings,
    fake: FakeHyperswitch,
    order_id: uuid.UUID,
    amount: str | None = None,
) -> dict[str, Any]:
    """A dispute opened at the PSP on the order's payment (all of it unless `amount`), its webhook
    applied: the dispute object."""
    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened", amount=amount)
    assert deliver(conn, settings, opened) == "ok"
    return opened


def moved(fake: FakeHyperswitch, opened: dict[str, Any], status: str) -> dict[str, Any]:
    """The dispute `opened` started, moved to `status` at the PSP: the object its webhook carries."""
    return dispute(fake, opened["payment_id"], status, dispute_id=opened["dispute_id"])


def payment_of(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> str:
    return str(row(conn, "SELECT payment_id FROM orders WHERE id = %s", order_id)["payment_id"])


# -- automatic refunds ----------------------------------------------------------------------------------


def failed_automatic_refund(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    *,
    invoice: bool = False,
) -> dict[str, Any]:
    """A payment that succeeded late for a failed order (or, `invoice`, a failed subscription
    invoice), its automatic refund sent and failed at the PSP: the money in suspense, a discrepancy
    open. Its ids and amount."""
    if invoice:
        opened = commands.subscribe(conn, client, BUYER, make_plan(conn, 999))
        payment_id, amount, currency = opened["payment_id"], 999, "EUR"
        late = {"payment_id": payment_id, "status": "failed", "amount": amount, "currency": currency}
        assert process(settings, store_event(conn, "payment_failed", late)) == "ok"
    else:
        payment_id, amount, currency = hyperswitch.merchant_id("pay", uuid.uuid4()), 700, "USD"
        make_order(conn, [(SELLER_A, amount)], status="failed", payment_id=payment_id)
        fake.payments[payment_id] = {"payment_id": payment_id, "amount": amount, "currency": currency}
        fake.payments[payment_id].update(status="succeeded", client_secret="cs", metadata={})
    late = {"payment_id": payment_id, "status": "succeeded", "amount": amount, "currency": currency}
    settle_payment(fake, payment_id, "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", late)) == "ok"
    assert automatic_refunds.send_unsent(conn, client)["sent"] == 1
    refund = row(conn, "SELECT id, hyperswitch_refund_id, order_id, invoice_id FROM refunds WHERE automatic")
    failed = settle_refund(fake, refund["hyperswitch_refund_id"], "failed", "card closed")
    assert process(settings, store_event(conn, "refund_failed", dict(failed))) == "ok"
    return {**refund, "payment_id": payment_id, "amount": amount, "currency": currency}


# -- payouts ------------------------------------------------------------------------------------------


def sent_payout(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> dict[str, Any]:
    """`three_items`'s order past its refund window, seller A's bank account saved in Hyperswitch,
    and one pay-sellers sweep: seller A's payout of 800 USD, submitted and pending at the PSP."""
    order_id = three_items(conn, settings, fake)
    conn.execute("UPDATE orders SET refund_deadline = now() - interval '1 day' WHERE id = %s", [order_id])
    customer_id = hyperswitch.merchant_id("cus", SELLER_A)
    conn.execute(
        "INSERT INTO seller_payout_methods (seller_id, customer_id, payout_method_id) VALUES (%s, %s, %s)",
        [SELLER_A, customer_id, fake.save_payout_method(customer_id)],
    )
    with psycopg.connect(settings.database_url) as own:
        counts = payouts.pay_sellers(own, client, dataclasses.replace(settings, payout_minimum=100))
    assert counts["submitted"] == 1, counts  # seller B saved no bank account
    return row(conn, "SELECT * FROM payouts WHERE seller_id = %s", SELLER_A)
