"""Orders: confirm-order (create the PSP payment) and the payment webhook that completes or fails them.

pending →(payment_succeeded) completed, with licenses, seller credits and transfers in one transaction;
pending →(payment_failed | payment_cancelled) failed. A terminal order ignores further events.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg.rows import class_row

from veza_worker import automatic_refunds, db, discrepancies, errors, events, hyperswitch, ledger

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

SUCCEEDED = "payment_succeeded"


class Status(StrEnum):
    """orders.status."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    REFUND_PENDING = "refund_pending"  # one refund in flight (refunds.py)
    REFUNDED = "refunded"
    DISPUTED = "disputed"  # a dispute is open (disputes.py)
    CHARGED_BACK = "charged_back"


class TransferStatus(StrEnum):
    """seller_transfers.status: an order's payment creates one pending transfer per seller; a
    dispute holds them (disputes.py), a refund or a chargeback reverses them (refunds.py)."""

    PENDING = "pending"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    FAILED = "failed"
    REVERSED = "reversed"


@dataclass(frozen=True)
class Order:
    id: uuid.UUID
    buyer_id: uuid.UUID
    status: str  # a Status
    total_amount: int
    currency: str
    payment_id: str | None
    completed_at: datetime | None
    refund_deadline: datetime | None
    hold_released_at: datetime | None

    @property
    def bucket(self) -> ledger.Bucket:
        """Where its sellers' earnings stand: held until the payout sweep releases the order."""
        return ledger.Bucket.HELD if self.hold_released_at is None else ledger.Bucket.AVAILABLE


@dataclass(frozen=True)
class Item:
    """An order item and what the PSP did to it: refunded (a succeeded refund has it), in flight
    (a pending one), disputed (an open or lost dispute took it), charged back (a lost one)."""

    id: uuid.UUID
    seller_id: uuid.UUID
    amount: int
    refunded: bool
    in_flight: bool
    disputed: bool
    charged_back: bool


def items(conn: db.Connection, order_id: uuid.UUID) -> list[Item]:
    with conn.cursor(row_factory=class_row(Item)) as cur:
        return cur.execute(QUERIES["items"], {"order_id": order_id}).fetchall()


def by_account(order: Order, taken: list[Item]) -> dict[str, int]:
    """The items' amounts by the seller account that holds them."""
    entries: dict[str, int] = {}
    for item in taken:
        ledger.sum_into(entries, ledger.seller(item.seller_id, order.bucket), item.amount)
    return entries


def follow_facts(conn: db.Connection, order_id: uuid.UUID) -> str:
    """Set a paid order's status (and refunded_amount) from what the PSP did to it; the status."""
    row = conn.execute(QUERIES["follow_facts"], {"order_id": order_id}).fetchone()
    return str(row[0]) if row else ""


def lock(conn: db.Connection, order_id: uuid.UUID) -> Order | None:
    with conn.cursor(row_factory=class_row(Order)) as cur:
        return cur.execute(QUERIES["lock_order"], {"order_id": order_id}).fetchone()


def lock_by_payment(conn: db.Connection, payment_id: str) -> Order | None:
    with conn.cursor(row_factory=class_row(Order)) as cur:
        return cur.execute(QUERIES["lock_order_by_payment"], {"payment_id": payment_id}).fetchone()


def is_seller(conn: db.Connection, order_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    row = conn.execute(QUERIES["is_seller"], {"order_id": order_id, "user_id": user_id}).fetchone()
    return bool(row and row[0])


# -- confirm-order ----------------------------------------------------------------------------------


def confirm(conn: db.Connection, client: hyperswitch.Client, order_id: uuid.UUID) -> dict[str, Any]:
    """Create (or find again) the PSP payment of a pending order; the order stays pending."""
    with conn.transaction():
        order = lock(conn, order_id)
        if order is None:
            raise errors.NotFound(f"order {order_id} not found")
        if order.status != Status.PENDING:
            raise errors.DomainError(f"order {order_id} is {order.status}, not pending")
        payment_id = order.payment_id or hyperswitch.merchant_id("pay", order.id)
        if order.payment_id is None:  # stored before the call: a webhook or a retry always finds it
            conn.execute(QUERIES["set_payment_id"], {"order_id": order.id, "payment_id": payment_id})
    payment = _create_payment(client, order, payment_id)
    log.info("order %s payment %s created, psp status %s", order.id, payment_id, payment.get("status"))
    return {
        "order_id": str(order.id),
        "payment_id": payment_id,
        "client_secret": payment.get("client_secret"),
        "status": order.status,
        "psp_status": payment.get("status"),
    }


def _create_payment(client: hyperswitch.Client, order: Order, payment_id: str) -> dict[str, Any]:
    try:
        return client.create_payment(
            payment_id=payment_id,
            amount=order.total_amount,
            currency=order.currency,
            idempotency_key=str(order.id),
            metadata={"order_id": str(order.id)},
            description=f"Order {order.id}",
        )
    except errors.HyperswitchUnauthorized as exc:  # our key, not the payment: the order stays pending
        raise hyperswitch.key_refused(f"order {order.id}: payment {payment_id}", exc) from exc
    except errors.HyperswitchUnavailable as exc:
        log.warning("order %s: payment %s create was ambiguous: %s", order.id, payment_id, exc)
        raise errors.PaymentProviderUnavailable("payment provider unavailable, will be reconciled") from exc
    except errors.HyperswitchRejected as exc:
        raise errors.PaymentRejected(
            f"payment rejected by payment provider: {exc.message or exc.code}"
        ) from exc


# -- the payment webhook ----------------------------------------------------------------------------


def apply_payment(conn: db.Connection, order: Order, event: events.Event, refund_window: timedelta) -> str:
    """A final payment for a locked order: its object's status and captured amount decide.

    No money is kept for nothing: a payment that succeeds for an order we hold failed, or that
    captured less than the order (which then fails), is refunded in full automatically.
    """
    outcome = events.payment_outcome(event.event_type, event.data)
    if order.status != Status.PENDING:
        if outcome.kind != "failed" and order.status == Status.FAILED:
            return _refund_automatically(conn, order, outcome.captured, "payment for a failed order")
        return f"skipped: order already {order.status}"
    if outcome.kind == "failed":
        _fail(conn, order, event.event_type or "failed")
        return "ok"
    if outcome.kind == "partial":
        _fail(conn, order, "partial capture")
        if outcome.captured > 0:
            _refund_automatically(conn, order, outcome.captured, "partial capture of the order")
        return "ok"
    if not events.paid_in_full(event.data, order.total_amount, order.currency, f"order {order.id}"):
        return "error: amount mismatch"
    _complete(conn, order, refund_window)
    return "ok"


def _fail(conn: db.Connection, order: Order, why: str) -> None:
    conn.execute(QUERIES["fail_order"], {"order_id": order.id})
    log.info("order %s failed: %s", order.id, why)


def _refund_automatically(conn: db.Connection, order: Order, amount: int, what: str) -> str:
    opened = automatic_refunds.open_refund(
        conn, order_id=order.id, amount=amount, currency=order.currency, note=f"automatic: {what}"
    )
    if not opened:
        return "skipped: order already refunded automatically"
    log.warning(
        "order %s: payment %s took %d %s for nothing (%s): refunding it automatically",
        order.id,
        order.payment_id,
        amount,
        order.currency,
        what,
    )
    return "ok"


def _complete(conn: db.Connection, order: Order, refund_window: timedelta) -> None:
    """In the caller's transaction: order completed, licenses, transfers (one statement), then the
    payment posted: world -total, each seller's items into held."""
    params = {"order_id": order.id, "currency": order.currency, "refund_window": refund_window}
    row = conn.execute(QUERIES["complete_order"], params).fetchone()
    assert row is not None  # a SELECT of aggregates always returns its row
    licenses, _transfers, sellers, amounts = row
    earned = dict(zip(sellers, amounts, strict=True))
    ledger.post(conn, ledger.order_paid(order.id, order.currency, order.total_amount, earned))
    if sum(amounts) != order.total_amount:
        discrepancies.open_one(
            conn,
            discrepancies.Kind.ORDER_ITEMS_MISMATCH,
            f"order {order.id} was paid {order.total_amount} {order.currency} but its items add up to"
            f" {sum(amounts)}: the difference is in platform:unallocated",
            order_id=order.id,
            amount=order.total_amount - sum(amounts),
            currency=order.currency,
        )
    log.info("order %s completed: %d licenses, %d sellers credited", order.id, licenses, len(sellers))
