"""The refund state machine, in three phases, by item.

1. `open`: one short transaction with the order locked: checks, the items to refund (default: every
   item not yet refunded; a seller only their own), refund row `pending` for their sum with its PSP
   id derived from its own uuid, `refund_items`, order `refund_pending` (one refund in flight).
2. `submit`: `POST /refunds` outside any transaction. A definitive rejection fails the refund and
   puts the order back to `completed`; an ambiguous failure changes nothing (the reconciler
   settles it); success sets `submitted_at` and the status stays `pending`.
3. `settle`: the PSP's final word (webhook or reconciler). succeeded → refund succeeded; for its
   items only: licenses revoked, sellers debited (clamped at zero), transfers split and reversed;
   `refunded_amount` raised; order `refunded` when no item is left, else `completed`; one
   transaction. failed → refund failed, order `completed`, its items free to ask again. A terminal
   refund ignores the rest. A refund made at the PSP (dashboard, API) is adopted (`adopt`).

Every writer locks the order first, then the refund.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import class_row

from veza_worker import automatic_refunds, db, errors, events, hyperswitch, orders
from veza_worker.events import Event
from veza_worker.settings import Settings

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

REASONS = ("duplicate", "fraudulent", "requested_by_customer")
DEFAULT_REASON = "requested_by_customer"
MAX_NOTE_CHARS = 500  # Hyperswitch metadata values are capped at 500 characters


class Status(StrEnum):
    """refunds.status: pending until the PSP's final word (a webhook or the reconciler)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Refund:
    id: uuid.UUID
    order_id: uuid.UUID | None  # None for an invoice's automatic refund
    status: str  # a Status
    amount: int
    currency: str
    hyperswitch_refund_id: str
    submitted_at: datetime | None
    succeeded_at: datetime | None
    requested_by: uuid.UUID | None  # None: made at the PSP (adopted) or automatic


@dataclass(frozen=True)
class Opened:
    """What phase 1 hands to phase 2."""

    refund_id: uuid.UUID
    hyperswitch_refund_id: str
    order_id: uuid.UUID
    payment_id: str
    amount: int


def request(
    conn: db.Connection,
    client: hyperswitch.Client,
    order_id: uuid.UUID,
    requested_by: uuid.UUID,
    *,
    items: list[uuid.UUID] | None = None,
    reason: str = DEFAULT_REASON,
    note: str | None = None,
    refund_window: timedelta,
) -> dict[str, Any]:
    """Phases 1 and 2: `{refund_id, hyperswitch_refund_id, status, amount, items}`, status being ours."""
    opened = open_refund(
        conn, order_id, requested_by, items=items, reason=reason, note=note, refund_window=refund_window
    )
    submit(conn, client, opened, reason=reason, note=note)
    return _summary(conn, opened)


def lock(conn: db.Connection, refund_id: uuid.UUID) -> Refund | None:
    with conn.cursor(row_factory=class_row(Refund)) as cur:
        return cur.execute(QUERIES["lock_refund"], {"refund_id": refund_id}).fetchone()


# -- phase 1 ----------------------------------------------------------------------------------------


def open_refund(
    conn: db.Connection,
    order_id: uuid.UUID,
    requested_by: uuid.UUID,
    *,
    items: list[uuid.UUID] | None = None,
    reason: str,
    note: str | None,
    refund_window: timedelta,
) -> Opened:
    """The buyer may refund any items of the order; a seller only their own (by default, all of
    their items not yet refunded). Each rejection is a DomainError saying why; nothing is written."""
    if reason not in REASONS:
        raise ValueError(f"refund reason must be one of {', '.join(REASONS)}")
    with conn.transaction():
        order = orders.lock(conn, order_id)
        if order is None:
            raise errors.NotFound(f"order {order_id} not found")
        is_buyer = requested_by == order.buyer_id
        if not is_buyer and not orders.is_seller(conn, order.id, requested_by):
            raise errors.Forbidden(
                f"user {requested_by} is neither the buyer nor a seller of order {order_id}"
            )
        payment_id = _refundable(order, refund_window)
        chosen = _choose_items(conn, order, items, None if is_buyer else requested_by)
        amount = sum(item.amount for item in chosen)
        if amount == 0:
            raise errors.DomainError(f"order {order.id}: the items asked for cost nothing: nothing to refund")
        refund_id = uuid.uuid4()
        opened = Opened(refund_id, hyperswitch.merchant_id("ref", refund_id), order.id, payment_id, amount)
        try:
            with conn.transaction():  # a savepoint: the UNIQUE below may refuse the row
                conn.execute(
                    QUERIES["insert_refund"],
                    {
                        "id": refund_id,
                        "order_id": order.id,
                        "requested_by": requested_by,
                        "amount": amount,
                        "currency": order.currency,
                        "reason": reason,
                        "note": note,
                        "hyperswitch_refund_id": opened.hyperswitch_refund_id,
                    },
                )
        except psycopg.errors.UniqueViolation as exc:  # a pending refund the order status did not show
            raise errors.DomainError("refund already in progress") from exc
        _add_items(conn, refund_id, [item.id for item in chosen])
        _set_order_status(conn, order.id, orders.Status.REFUND_PENDING)
    log.info(
        "refund %s opened for order %s by %s: %d items, %d %s",
        opened.hyperswitch_refund_id,
        order.id,
        requested_by,
        len(chosen),
        amount,
        order.currency,
    )
    return opened


@dataclass(frozen=True)
class Item:
    """An order item and where it stands: refunded (a succeeded refund has it), in_flight (pending)."""

    id: uuid.UUID
    seller_id: uuid.UUID
    amount: int
    refunded: bool
    in_flight: bool


def order_items(conn: db.Connection, order_id: uuid.UUID) -> list[Item]:
    with conn.cursor(row_factory=class_row(Item)) as cur:
        return cur.execute(QUERIES["order_items"], {"order_id": order_id}).fetchall()


def _choose_items(
    conn: db.Connection, order: orders.Order, asked: list[uuid.UUID] | None, seller: uuid.UUID | None
) -> list[Item]:
    """The items to refund: those asked for, each checked, or by default every one not yet refunded
    (a seller's default and limit: their own)."""
    all_items = order_items(conn, order.id)
    by_id = {item.id: item for item in all_items}
    if asked is None:
        chosen = [i for i in all_items if not i.refunded and (seller is None or i.seller_id == seller)]
        if not chosen:
            raise errors.DomainError(f"order {order.id}: nothing left to refund")
        return chosen
    chosen = []
    for item_id in dict.fromkeys(asked):
        item = by_id.get(item_id)
        if item is None:
            raise errors.DomainError(f"item {item_id} is not an item of order {order.id}")
        if item.refunded or item.in_flight:
            raise errors.DomainError(f"item {item_id} of order {order.id} is already refunded")
        if seller is not None and item.seller_id != seller:
            raise errors.Forbidden(
                f"item {item_id} is not sold by {seller}: a seller refunds only their own items"
            )
        chosen.append(item)
    return chosen


def _add_items(conn: db.Connection, refund_id: uuid.UUID, item_ids: list[uuid.UUID]) -> None:
    conn.execute(QUERIES["insert_refund_items"], {"refund_id": refund_id, "item_ids": item_ids})


def _refundable(order: orders.Order, refund_window: timedelta) -> str:
    """The payment to refund, or the DomainError that says why this order cannot be refunded."""
    if order.status == orders.Status.REFUND_PENDING:
        raise errors.DomainError("refund already in progress")
    if order.status in (orders.Status.DISPUTED, orders.Status.CHARGED_BACK):
        raise errors.DomainError(f"order has a dispute: order {order.id} is {order.status}")
    if order.status != orders.Status.COMPLETED:
        raise errors.DomainError(f"order {order.id} is {order.status}: only completed orders can be refunded")
    if order.payment_id is None or order.total_amount == 0:
        raise errors.DomainError(f"order {order.id} has no payment to refund")
    deadline = order.refund_deadline or (order.completed_at and order.completed_at + refund_window)
    if deadline is None:
        raise errors.DomainError(f"order {order.id} has no completion time: its refund window is unknown")
    if datetime.now(UTC) > deadline:
        raise errors.DomainError(f"refund window closed on {deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC")
    return order.payment_id


# -- phase 2 ----------------------------------------------------------------------------------------


def submit(
    conn: db.Connection, client: hyperswitch.Client, opened: Opened, *, reason: str, note: str | None
) -> None:
    """POST /refunds, outside any transaction. A retry sends the same refund_id: never two refunds."""
    metadata = {"order_id": str(opened.order_id), "refund_id": str(opened.refund_id)}
    if note:
        metadata["note"] = note
    try:
        client.create_refund(
            refund_id=opened.hyperswitch_refund_id,
            payment_id=opened.payment_id,
            amount=opened.amount,
            reason=reason,
            idempotency_key=str(opened.refund_id),
            metadata=metadata,
        )
    except errors.HyperswitchUnavailable as exc:
        log.warning(
            "refund %s: create was ambiguous, left for the reconciler: %s", opened.hyperswitch_refund_id, exc
        )
        message = "payment provider unavailable, will be reconciled"
        raise errors.PaymentProviderUnavailable(message, _summary(conn, opened)) from exc
    except errors.HyperswitchRejected as exc:
        _reject(conn, opened, exc.message or exc.code)
        message = f"refund rejected by payment provider: {exc.message or exc.code}"
        raise errors.PaymentRejected(message, _summary(conn, opened)) from exc
    with conn.transaction():
        mark_submitted(conn, opened.refund_id)


def mark_submitted(conn: db.Connection, refund_id: uuid.UUID) -> None:
    """The PSP holds the refund; its status is left to a webhook or the reconciler."""
    conn.execute(QUERIES["mark_submitted"], {"refund_id": refund_id})


def _reject(conn: db.Connection, opened: Opened, message: str) -> None:
    log.warning("refund %s rejected by the payment provider: %s", opened.hyperswitch_refund_id, message)
    with conn.transaction():
        order = orders.lock(conn, opened.order_id)
        refund = lock(conn, opened.refund_id)
        assert order is not None and refund is not None  # rows are never deleted
        settle(conn, order, refund, "failed", message)


def _summary(conn: db.Connection, opened: Opened) -> dict[str, Any]:
    with conn.transaction():
        row = conn.execute(QUERIES["refund_status"], {"refund_id": opened.refund_id}).fetchone()
    return {
        "refund_id": str(opened.refund_id),
        "hyperswitch_refund_id": opened.hyperswitch_refund_id,
        "status": row[0] if row else None,
    }


# -- phase 3: the PSP's final word ------------------------------------------------------------------


def handle_refund(conn: db.Connection, event: Event, settings: Settings) -> str:
    """refund_succeeded / refund_failed, or any refund object: decided by the object's status."""
    psp_id = events.object_id(event.data, "refund_id")
    if psp_id is None:
        return "error: missing refund_id"
    found = conn.execute(QUERIES["find_order_of_refund"], {"hyperswitch_refund_id": psp_id}).fetchone()
    if found is None:
        return _adopt_or_wait(conn, psp_id, event)
    refund_id, order_id, automatic = found
    if automatic or order_id is None:  # money we gave back on our own: it moves no order or balance
        return automatic_refunds.settle(conn, refund_id, _psp_status(event), event.data.get("error_message"))
    order = orders.lock(conn, order_id)
    refund = lock(conn, refund_id)
    assert order is not None and refund is not None
    message = event.data.get("error_message")
    message = message if isinstance(message, str) else None
    return settle(conn, order, refund, _psp_status(event), message, event.data.get("amount"))


def _adopt_or_wait(conn: db.Connection, psp_id: str, event: Event) -> str:
    """A refund we never created: made at the PSP for one of our payments (adopted), or the
    webhook beat phase 1's commit (retried, then `skipped: unknown refund`)."""
    payment_id = events.object_id(event.data, "payment_id")
    order = orders.lock_by_payment(conn, payment_id) if payment_id else None
    if order is None:
        raise errors.UnknownObject("skipped: unknown refund")
    return adopt(conn, order, psp_id, event)


def adopt(conn: db.Connection, order: orders.Order, psp_id: str, event: Event) -> str:
    """Record a refund made in the Hyperswitch dashboard or API. On a completed order, for the
    whole remaining amount it has a refund's full effects; for any other amount, or on an order in
    another state, it is recorded, changes no balance, and one ERROR line asks a human."""
    amount = event.data.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "error: invalid refund amount"
    status = _psp_status(event)
    message = event.data.get("error_message")
    applies = status == "succeeded" and order.status == orders.Status.COMPLETED
    # Pending when settle applies it below, or while the PSP has not decided; a refund the PSP
    # decided and that changes nothing here is recorded with the PSP's final status, ours too.
    recorded = Status.PENDING if applies or status not in ("succeeded", "failed") else Status(status)
    reason = event.data.get("reason")
    refund_id = uuid.uuid4()
    conn.execute(
        QUERIES["insert_adopted_refund"],
        {
            "id": refund_id,
            "order_id": order.id,
            "invoice_id": None,
            "amount": amount,
            "currency": order.currency,
            "reason": reason if isinstance(reason, str) else DEFAULT_REASON,
            "status": recorded,
            "hyperswitch_refund_id": psp_id,
            "error_message": message if isinstance(message, str) and status == "failed" else None,
        },
    )
    log.warning(
        "refund %s made at the payment provider for order %s: %d %s %s, adopted",
        psp_id,
        order.id,
        amount,
        order.currency,
        status,
    )
    if applies:
        refund = lock(conn, refund_id)
        assert refund is not None
        return settle(conn, order, refund, status, None, amount)
    if status == "succeeded":
        log.error(
            "refund %s of %d %s made at the payment provider for order %s, which is %s: recorded,"
            " no balance changed; needs a human",
            psp_id,
            amount,
            order.currency,
            order.id,
            order.status,
        )
    return "ok"


def _psp_status(event: Event) -> str:
    status = event.data.get("status")
    if isinstance(status, str):
        return status
    return (event.event_type or "").removeprefix("refund_")


def settle(
    conn: db.Connection,
    order: orders.Order,
    refund: Refund,
    status: str,
    error_message: str | None,
    amount: Any = None,
) -> str:
    """Apply the PSP's status (and refunded amount, when known) to a locked order and refund.

    A terminal refund ignores it; a success for another amount than ours changes nothing.
    """
    if refund.status != Status.PENDING:
        if status == "succeeded" and refund.status == Status.FAILED:
            log.error(
                "refund %s is failed but the psp refunded it: needs a human", refund.hyperswitch_refund_id
            )
        return f"skipped: refund already {refund.status}"
    if status == "succeeded":
        if amount is not None and amount != refund.amount:
            log.error(
                "refund %s amount mismatch: psp refunded %r, we asked %d %s; needs a human",
                refund.hyperswitch_refund_id,
                amount,
                refund.amount,
                refund.currency,
            )
            return "error: refund amount mismatch"
        return _succeed(conn, order, refund)
    if status == "failed":
        _fail(conn, order, refund, error_message or "refund failed at the payment provider")
        return "ok"
    return f"skipped: refund status {status or 'missing'}"


def _succeed(conn: db.Connection, order: orders.Order, refund: Refund) -> str:
    """One transaction (the caller's): refund, order, and for the refund's items only: licenses,
    balances, transfers. A refund with no items (made at the PSP) takes every item left when its
    amount is theirs; any other amount is recorded with no effect and needs a human."""
    params = {"refund_id": refund.id, "order_id": order.id, "currency": order.currency}
    conn.execute(QUERIES["succeed_refund"], params)
    if not _has_items(conn, refund) and not _take_remaining_items(conn, order, refund):
        return "ok"
    conn.execute(QUERIES["revoke_licenses"], params)
    for seller_id, shortfall in conn.execute(QUERIES["debit_sellers"], params).fetchall():
        if shortfall:
            log.warning(
                "refund %s: seller %s balance clamped at zero, %d %s not recovered",
                refund.hyperswitch_refund_id,
                seller_id,
                shortfall,
                order.currency,
            )
    _reverse_transfers(conn, order, refund)
    row = conn.execute(
        QUERIES["raise_refunded_amount"], {"order_id": order.id, "amount": refund.amount}
    ).fetchone()
    assert row is not None
    log.info(
        "refund %s succeeded: order %s %s, %d of %d refunded",
        refund.hyperswitch_refund_id,
        order.id,
        row[0],
        row[1],
        order.total_amount,
    )
    return "ok"


def _has_items(conn: db.Connection, refund: Refund) -> bool:
    row = conn.execute(QUERIES["refund_item_count"], {"refund_id": refund.id}).fetchone()
    return bool(row and row[0])


def _take_remaining_items(conn: db.Connection, order: orders.Order, refund: Refund) -> bool:
    """A refund without items (made at the PSP, or from before refunds had items) refunds the
    items left when it is for exactly their amount, on an order that is ours to move."""
    left = [i for i in order_items(conn, order.id) if not i.refunded and not i.in_flight]
    ours_to_move = order.status == (
        orders.Status.REFUND_PENDING if refund.requested_by else orders.Status.COMPLETED
    )
    if ours_to_move and left and sum(i.amount for i in left) == refund.amount:
        _add_items(conn, refund.id, [i.id for i in left])
        return True
    log.error(
        "refund %s of %d %s for order %s (status %s) matches no items left: recorded, no balance changed;"
        " needs a human",
        refund.hyperswitch_refund_id,
        refund.amount,
        refund.currency,
        order.id,
        order.status,
    )
    return False


def _reverse_transfers(conn: db.Connection, order: orders.Order, refund: Refund) -> None:
    """Per seller, the open transfer keeps the unrefunded items' amount, the reversed ones the rest."""
    conn.execute(QUERIES["reverse_transfers"], {"refund_id": refund.id, "order_id": order.id})


def _fail(conn: db.Connection, order: orders.Order, refund: Refund, message: str) -> None:
    conn.execute(QUERIES["fail_refund"], {"refund_id": refund.id, "error_message": message})
    if order.status == orders.Status.REFUND_PENDING:
        _set_order_status(conn, order.id, orders.Status.COMPLETED)
    log.warning(
        "refund %s failed: %s; order %s back to completed", refund.hyperswitch_refund_id, message, order.id
    )


def _set_order_status(conn: db.Connection, order_id: uuid.UUID, status: orders.Status) -> None:
    conn.execute(QUERIES["set_order_status"], {"order_id": order_id, "status": status})
