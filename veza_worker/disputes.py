"""Disputes and chargebacks: the state machine a dispute webhook (or the reconciler) drives.

Rank: dispute_opened < dispute_challenged < final (won, cancelled, lost, accepted, expired). A
dispute never moves back down, a final one ignores the rest, and a final event arriving first has
the effects of both steps. The bank's moves are facts: they always post, whatever the order's
status when they arrive, and the order's status follows from them (orders.follow_facts).

    opened     the bank takes the amount: it takes the order's items not refunded and not taken by
               another dispute (dispute_items), from their sellers (held or available, negative if
               need be); an amount those items do not cover is unallocated, with a discrepancy;
               the order's pending transfers on_hold
    won, cancelled            the opening's exact reverse, except items refunded meanwhile (their
                              refund was paid from unallocated: the win fills it back); transfers
                              released once no dispute is open
    lost, accepted, expired   nothing more moves; the items' licenses revoked, transfers reversed
    on an invoice's payment: opened takes the amount from revenue, won gives it back; lost /
                             accepted / expired cancel the subscription at once

Every writer locks the order (or the subscription) first, then the dispute; balances are locked in
(seller_id, currency) order by the ledger's posting.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg.rows import class_row, dict_row

from veza_worker import db, discrepancies, errors, events, ledger, orders
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands, invoices, model

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)


class Status(StrEnum):
    """disputes.status: Hyperswitch's own dispute_status strings, and `none` for a dispute recorded
    before any of its steps was applied (a payment we did not know yet)."""

    NONE = "none"
    OPENED = "dispute_opened"
    CHALLENGED = "dispute_challenged"
    WON = "dispute_won"
    CANCELLED = "dispute_cancelled"
    LOST = "dispute_lost"
    ACCEPTED = "dispute_accepted"
    EXPIRED = "dispute_expired"


WON = (Status.WON, Status.CANCELLED)  # the money stays ours
LOST = (Status.LOST, Status.ACCEPTED, Status.EXPIRED)  # the money went back to the customer
# Keyed by text too: a webhook's status arrives as a plain string.
RANK: dict[str, int] = {
    Status.NONE: 0,
    Status.OPENED: 1,
    Status.CHALLENGED: 2,
    **dict.fromkeys(WON + LOST, 3),
}
FINAL_RANK = 3


@dataclass(frozen=True)
class Dispute:
    id: str
    payment_id: str
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    amount: int
    currency: str
    stage: str
    status: str  # a Status
    held: bool
    closed_at: datetime | None


@dataclass(frozen=True)
class Report:
    """A dispute as the PSP reports it (webhook object or GET answer), its values checked."""

    id: str
    payment_id: str
    status: str
    stage: str
    amount: int
    currency: str
    reason: str | None
    challenge_required_by: datetime | None


def report(event_type: str | None, data: Any) -> Report:
    """The dispute in an event; BadDelivery when a value can never be applied."""
    dispute_id = events.object_id(data, "dispute_id")
    payment_id = events.object_id(data, "payment_id")
    if dispute_id is None or payment_id is None:
        raise events.BadDelivery("missing dispute_id or payment_id")
    status = data.get("dispute_status") if data.get("dispute_status") in RANK else event_type
    if status not in RANK or status == Status.NONE:
        raise events.BadDelivery("invalid dispute status")
    amount = data.get("amount")  # a string of minor units (StringMinorUnit)
    if not (isinstance(amount, str) and amount.isascii() and amount.isdigit()):
        raise events.BadDelivery("invalid dispute amount")
    currency = data.get("currency")
    return Report(
        id=dispute_id,
        payment_id=payment_id,
        status=status,
        stage=str(data.get("dispute_stage") or "dispute"),
        amount=int(amount),
        currency=currency if isinstance(currency, str) else "",
        reason=data.get("connector_reason") if isinstance(data.get("connector_reason"), str) else None,
        challenge_required_by=_time(data.get("challenge_required_by")),
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def lock(conn: db.Connection, dispute_id: str) -> Dispute | None:
    with conn.cursor(row_factory=class_row(Dispute)) as cur:
        return cur.execute(QUERIES["lock_dispute"], {"id": dispute_id}).fetchone()


# -- the webhook ------------------------------------------------------------------------------------


def handle_dispute(conn: db.Connection, event: events.Event, settings: Settings) -> str:
    """Any dispute_* event: recorded always; applied to its order or subscription by rank."""
    new = report(event.event_type, event.data)
    order = orders.lock_by_payment(conn, new.payment_id)
    invoice = None if order is not None else invoices.find_by_payment(conn, new.payment_id)
    subscription = None
    if invoice is not None:
        subscription = model.lock(conn, invoice[1])
    params = {
        "id": new.id,
        "payment_id": new.payment_id,
        "order_id": order.id if order else None,
        "invoice_id": invoice[0] if invoice else None,
        "amount": new.amount,
        "currency": new.currency or (order.currency if order else ""),
        "stage": new.stage,
        "reason": new.reason,
        "challenge_required_by": new.challenge_required_by,
    }
    conn.execute(QUERIES["record_dispute"], params)
    dispute = lock(conn, new.id)
    assert dispute is not None
    if order is None and subscription is None:
        _move(conn, dispute, new, held=False)
        # Recorded, then raised: within the unknown-object patience the whole delivery is rolled
        # back and retried (our own commit may be late); after it, this result stands, row kept.
        raise errors.UnknownObject("skipped: unknown payment")
    if dispute.closed_at is not None or RANK[new.status] <= RANK[dispute.status]:
        return f"skipped: dispute already {dispute.status}"
    if order is not None:
        held = _apply_to_order(conn, order, dispute, new)
    else:
        assert subscription is not None and invoice is not None
        held = _apply_to_invoice(conn, invoice[0], dispute, new)
        if new.status in LOST:
            _cancel_subscription(conn, subscription, dispute, settings)
    _move(conn, dispute, new, held=held)
    if order is not None:
        _follow(conn, order)
    log.info("dispute %s %s → %s (payment %s)", dispute.id, dispute.status, new.status, new.payment_id)
    return "ok"


def _move(conn: db.Connection, dispute: Dispute, new: Report, *, held: bool) -> None:
    params = {
        "id": dispute.id,
        "status": new.status if RANK[new.status] > RANK[dispute.status] else dispute.status,
        "stage": new.stage,
        "amount": new.amount,
        "reason": new.reason,
        "challenge_required_by": new.challenge_required_by,
        "held": held,
        "final": RANK[new.status] == FINAL_RANK,
    }
    conn.execute(QUERIES["move_dispute"], params)


def _opening_key(dispute: Dispute) -> str:
    return f"dispute:{dispute.id}:opened"


def _apply_to_order(conn: db.Connection, order: orders.Order, dispute: Dispute, new: Report) -> bool:
    """The money effects of moving `dispute` to `new.status`; whether the opening's take stands."""
    held = dispute.held
    if dispute.status == Status.NONE:  # opening (a final event first opens, then closes)
        _open(conn, order, dispute, new)
        held = True
    if new.status in WON and held:
        _won(conn, order, dispute)
        held = False
    elif new.status in LOST and held:
        _lost(conn, order, dispute)
    return held


def _open(conn: db.Connection, order: orders.Order, dispute: Dispute, new: Report) -> None:
    """The bank took the amount: the items no refund and no other dispute took are its own."""
    taken = [i for i in orders.items(conn, order.id) if not (i.refunded or i.disputed)]
    conn.execute(QUERIES["take_items"], {"dispute_id": dispute.id, "item_ids": [i.id for i in taken]})
    posting = ledger.dispute_opened(
        dispute.id,
        order.currency,
        new.amount,
        from_sellers=orders.by_account(order, taken),
        order_id=order.id,
    )
    ledger.post(conn, posting)
    covered = sum(i.amount for i in taken)
    if covered != new.amount:
        discrepancies.open_one(
            conn,
            discrepancies.Kind.DISPUTE_UNASSIGNED,
            f"dispute {dispute.id} on order {order.id} took {new.amount} {order.currency}; the items no"
            f" refund or other dispute took cover {covered}: the difference is in platform:unallocated",
            order_id=order.id,
            dispute_id=dispute.id,
            amount=new.amount - covered,
            currency=order.currency,
        )
    log.warning(
        "dispute %s opened on order %s: %d items (%d %s) taken from their sellers",
        dispute.id,
        order.id,
        len(taken),
        covered,
        order.currency,
    )


def _won(conn: db.Connection, order: orders.Order, dispute: Dispute) -> None:
    """The money came back: the opening reversed, but an item refunded meanwhile stays gone from its
    seller (its refund was paid from unallocated, which the win fills back)."""
    opening = ledger.entries_of(conn, _opening_key(dispute))
    back = {account: -amount for account, amount in opening.items()}
    mine = {i[0] for i in conn.execute(QUERIES["items_taken"], {"dispute_id": dispute.id})}
    for item in orders.items(conn, order.id):
        if item.id in mine and item.refunded:
            account = _account_of(opening, item.seller_id)
            ledger.sum_into(back, account, -item.amount)
            ledger.sum_into(back, ledger.UNALLOCATED, item.amount)
    closing = ledger.dispute_closed(dispute.id, order.currency, back, order_id=order.id)
    ledger.post(conn, closing)
    log.info("dispute %s won on order %s: sellers re-credited", dispute.id, order.id)


def _account_of(opening: dict[str, int], seller_id: uuid.UUID) -> str:
    """The account the opening took a seller's items from (held or available)."""
    prefix = f"seller:{seller_id}:"
    return next(account for account in opening if account.startswith(prefix))


def _lost(conn: db.Connection, order: orders.Order, dispute: Dispute) -> None:
    """Nothing more moves (the money left at the opening): the items it took are charged back."""
    if _took_items(conn, dispute):
        conn.execute(QUERIES["revoke_taken_licenses"], {"dispute_id": dispute.id})
        conn.execute(QUERIES["reverse_open_transfers"], {"order_id": order.id})
    log.warning(
        "order %s charged back by dispute %s: licenses revoked, transfers reversed", order.id, dispute.id
    )


def _took_items(conn: db.Connection, dispute: Dispute) -> bool:
    return conn.execute(QUERIES["items_taken"], {"dispute_id": dispute.id}).fetchone() is not None


def _follow(conn: db.Connection, order: orders.Order) -> None:
    """The order's status follows the facts; its transfers wait while any dispute is open."""
    held, pending = orders.TransferStatus.ON_HOLD, orders.TransferStatus.PENDING
    if orders.follow_facts(conn, order.id) == orders.Status.DISPUTED:
        moves = {"order_id": order.id, "from_status": pending, "to_status": held}
    else:
        moves = {"order_id": order.id, "from_status": held, "to_status": pending}
    conn.execute(QUERIES["move_transfers"], moves)


def _apply_to_invoice(conn: db.Connection, invoice_id: uuid.UUID, dispute: Dispute, new: Report) -> bool:
    """A subscription's revenue: the bank takes it at the opening, gives it back on a win."""
    held = dispute.held
    currency = new.currency or dispute.currency
    if dispute.status == Status.NONE:
        opened = ledger.dispute_opened(
            dispute.id, currency, new.amount, from_sellers={}, invoice_id=invoice_id
        )
        ledger.post(conn, opened)
        held = True
    if new.status in WON and held:
        back = {
            account: -amount for account, amount in ledger.entries_of(conn, _opening_key(dispute)).items()
        }
        ledger.post(conn, ledger.dispute_closed(dispute.id, currency, back, invoice_id=invoice_id))
        held = False
    return held


def _cancel_subscription(
    conn: db.Connection, subscription: model.Subscription, dispute: Dispute, settings: Settings
) -> None:
    """Canceled at once, as `cancel-subscription --now` does: a pending invoice's PSP payment is
    cancelled and the invoice failed, so the customer is not charged again."""
    why = f"dispute {dispute.id} on its payment {dispute.payment_id} was lost"
    commands.cancel_from_event(conn, subscription, settings, why)


# -- for the reconciler -----------------------------------------------------------------------------


def known_statuses(conn: db.Connection, dispute_ids: list[str]) -> dict[str, str]:
    """Our status of each of these disputes that we hold."""
    return dict(conn.execute(QUERIES["known_statuses"], {"ids": dispute_ids}).fetchall())


def oldest_open(conn: db.Connection, limit: int) -> list[str]:
    """Ours still open, the ones looked at longest ago (or never) first."""
    return [r[0] for r in conn.execute(QUERIES["open_disputes"], {"limit": limit})]


def mark_checked(conn: db.Connection, dispute_ids: list[str]) -> None:
    """The reconciler looked at these (a GET that changes nothing too): to the back of the line."""
    conn.execute(QUERIES["mark_checked"], {"ids": dispute_ids})


# -- for ops ----------------------------------------------------------------------------------------


def listing(conn: db.Connection, *, open_only: bool) -> list[dict[str, Any]]:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(QUERIES["list_disputes"], {"open_only": open_only}).fetchall()


def warn_deadlines(conn: db.Connection) -> int:
    """One WARNING per open dispute whose challenge deadline is under 48 h away, once each."""
    with conn.transaction():
        near = conn.execute(QUERIES["warn_deadlines"]).fetchall()
    for dispute_id, order_id, invoice_id, amount, currency, deadline in near:
        log.warning(
            "dispute %s deadline near: challenge_required_by=%s order_id=%s invoice_id=%s amount=%d %s;"
            " answer it in the Hyperswitch dashboard",
            dispute_id,
            deadline.isoformat(),
            order_id,
            invoice_id,
            amount,
            currency,
        )
    return len(near)
