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
   refund ignores the rest. A refund made at the PSP (dashboard, API) is adopted (`adopt`), for an
   order or a subscription invoice's payment (revenue gives it back, or suspense when the invoice's
   money was kept for nothing; never more than is left of the invoice; the invoice that paid for
   the subscription, paid back in full, cancels it). A payment cancelled after capture is a full
   refund of what is left (`cancel_after_capture`, `cancel_invoice_after_capture`).

Every writer locks the order first, then the refund.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import class_row

from veza_worker import automatic_refunds, db, discrepancies, errors, events, hyperswitch, ledger, orders
from veza_worker.events import Event
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands, invoices, model

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

REASONS = ("duplicate", "fraudulent", "requested_by_customer")
DEFAULT_REASON = "requested_by_customer"
MADE_AT_PSP = "made at the payment provider"
CANCELLED_POST_CAPTURE = "cancelled_post_capture"  # the PSP id suffix of a post-capture cancel's refund
CANCELLED_NOTE = "payment cancelled after capture at the payment provider"
MAX_NOTE_CHARS = 500  # Hyperswitch metadata values are capped at 500 characters


class Status(StrEnum):
    """refunds.status: pending until the PSP's final word (a webhook or the reconciler)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Refund:
    id: uuid.UUID
    order_id: uuid.UUID | None  # None for an invoice's refund
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


def _choose_items(
    conn: db.Connection, order: orders.Order, asked: list[uuid.UUID] | None, seller: uuid.UUID | None
) -> list[orders.Item]:
    """The items to refund: those asked for, each checked, or by default every one not yet refunded
    (a seller's default and limit: their own)."""
    all_items = orders.items(conn, order.id)
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
    except errors.HyperswitchUnauthorized as exc:  # our key, not the refund: left as if ambiguous
        raise hyperswitch.key_refused(
            f"refund {opened.hyperswitch_refund_id}", exc, _summary(conn, opened)
        ) from exc
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
        return _adopt_or_wait(conn, psp_id, event, settings)
    refund_id, order_id, invoice_id, automatic = found
    if automatic:  # money we gave back on our own: it moves no order or balance
        return automatic_refunds.settle(conn, refund_id, _psp_status(event), event.data.get("error_message"))
    if order_id is None:
        return _settle_invoice_refund(conn, invoice_id, refund_id, event, settings)
    order = orders.lock(conn, order_id)
    refund = lock(conn, refund_id)
    assert order is not None and refund is not None
    message = event.data.get("error_message")
    message = message if isinstance(message, str) else None
    return settle(conn, order, refund, _psp_status(event), message, event.data.get("amount"))


def _adopt_or_wait(conn: db.Connection, psp_id: str, event: Event, settings: Settings) -> str:
    """A refund we never created: made at the PSP for one of our payments, an order's or an
    invoice's (adopted), or the webhook beat phase 1's commit (retried, then `skipped: unknown
    refund`)."""
    payment_id = events.object_id(event.data, "payment_id")
    order = orders.lock_by_payment(conn, payment_id) if payment_id else None
    if order is not None:
        return adopt(conn, order, psp_id, event)
    invoice = invoices.find_by_payment(conn, payment_id) if payment_id else None
    if invoice is not None:
        return _adopt_for_invoice(conn, invoice[0], psp_id, event, settings)
    raise errors.UnknownObject("skipped: unknown refund")


def adopt(conn: db.Connection, order: orders.Order, psp_id: str, event: Event) -> str:
    """Record a refund made in the Hyperswitch dashboard or API, whatever the order's status. Its
    success is the PSP's fact and always posts: against the items left when it is for exactly
    their amount, else to platform:unallocated with a discrepancy."""
    adopted = _adopted(conn, psp_id, event, order.currency, {"order_id": order.id})
    if isinstance(adopted, str):
        return adopted
    refund = lock(conn, adopted[0])
    assert refund is not None
    return settle(conn, order, refund, "succeeded", None, adopted[1])


def _adopted(
    conn: db.Connection, psp_id: str, event: Event, currency: str, owner: dict[str, uuid.UUID]
) -> tuple[uuid.UUID, int] | str:
    """Record a refund made at the PSP for its owner (`order_id` or `invoice_id`): (its id,
    amount) when its success is to be applied now, else the delivery's final result."""
    amount = _psp_amount(event)
    if amount is None:
        return "error: invalid refund amount"
    refund_id = _record_made_at_psp(conn, psp_id, event, amount, currency, owner)
    if _psp_status(event) != "succeeded" or refund_id is None:
        return "ok"
    return refund_id, amount


def _psp_amount(event: Event) -> int | None:
    amount = event.data.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return None
    return amount


def _record_made_at_psp(
    conn: db.Connection,
    psp_id: str,
    event: Event,
    amount: int,
    currency: str,
    owner: dict[str, uuid.UUID],
    note: str = MADE_AT_PSP,
) -> uuid.UUID | None:
    """The refund row of money the PSP gave back without us asking, `pending` until settled (a
    failure recorded as such); None when that PSP id is already recorded."""
    status = _psp_status(event)
    message = event.data.get("error_message")
    reason = event.data.get("reason")
    params = {
        "id": uuid.uuid4(),
        "order_id": owner.get("order_id"),
        "invoice_id": owner.get("invoice_id"),
        "amount": amount,
        "currency": currency,
        "reason": reason if isinstance(reason, str) else DEFAULT_REASON,
        "note": note,
        "status": Status.FAILED if status == "failed" else Status.PENDING,
        "hyperswitch_refund_id": psp_id,
        "error_message": message if isinstance(message, str) and status == "failed" else None,
    }
    row = conn.execute(QUERIES["insert_adopted_refund"], params).fetchone()
    if row is None:
        return None
    of = " ".join(f"{key.removesuffix('_id')} {value}" for key, value in owner.items())
    log.warning("refund %s (%s) for %s: %d %s %s, adopted", psp_id, note, of, amount, currency, status)
    return uuid.UUID(str(row[0]))


# -- a payment cancelled after capture --------------------------------------------------------------


def cancel_after_capture(conn: db.Connection, order: orders.Order, event: Event) -> str:
    """payment_cancelled_post_capture for a paid order: the PSP gave the buyer back what was left.
    Like a full refund of the items left (not refunded, in flight or charged back), recorded as a
    refund under `<payment_id>:cancelled_post_capture`: licenses revoked, sellers debited, order
    `refunded`. Replayed, nothing is left: nothing moves twice."""
    if order.status == orders.Status.FAILED:
        return "skipped: order already failed"
    left = _items_left(conn, order)
    if not left:
        return "skipped: nothing left to reverse"
    amount = sum(item.amount for item in left)
    psp_id = f"{order.payment_id}:{CANCELLED_POST_CAPTURE}"
    refund_id = _record_made_at_psp(
        conn, psp_id, event, amount, order.currency, {"order_id": order.id}, note=CANCELLED_NOTE
    )
    if refund_id is None:
        return "skipped: payment already cancelled after capture"
    _add_items(conn, refund_id, [item.id for item in left])
    refund = lock(conn, refund_id)
    assert refund is not None
    return _succeed(conn, order, refund)


def cancel_invoice_after_capture(
    conn: db.Connection, invoice_id: uuid.UUID, event: Event, settings: Settings
) -> str:
    """payment_cancelled_post_capture for an invoice: a pending one simply failed; one the PSP holds
    money of (paid, or kept for nothing in suspense) gives back what no refund did or may yet do,
    like a refund made at the PSP (`_succeed_for_invoice`)."""
    subscription, invoice = invoices.lock_pair(conn, invoice_id)
    if invoice.status == invoices.Status.PENDING:
        return invoices.settle(conn, subscription, invoice, event.data, event.event_type)
    money = _invoice_money(conn, invoice.id)
    if invoice.status != invoices.Status.PAID and not money.kept:
        return f"skipped: invoice already {invoice.status}"
    left = money.captured - _invoice_refunded(conn, invoice.id)[1]
    if left <= 0:
        return "skipped: nothing left to reverse"
    psp_id = f"{invoice.payment_id}:{CANCELLED_POST_CAPTURE}"
    refund_id = _record_made_at_psp(
        conn, psp_id, event, left, invoice.currency, {"invoice_id": invoice.id}, note=CANCELLED_NOTE
    )
    if refund_id is None:
        return "skipped: payment already cancelled after capture"
    return _succeed_for_invoice(conn, subscription, invoice, refund_id, left, settings)


# -- refunds of a subscription invoice's payment ----------------------------------------------------


def _adopt_for_invoice(
    conn: db.Connection, invoice_id: uuid.UUID, psp_id: str, event: Event, settings: Settings
) -> str:
    """A refund made at the PSP of an invoice's payment: posted by `_succeed_for_invoice`."""
    subscription, invoice = invoices.lock_pair(conn, invoice_id)
    adopted = _adopted(conn, psp_id, event, invoice.currency, {"invoice_id": invoice.id})
    if isinstance(adopted, str):
        return adopted
    return _succeed_for_invoice(conn, subscription, invoice, *adopted, settings)


def _settle_invoice_refund(
    conn: db.Connection, invoice_id: uuid.UUID, refund_id: uuid.UUID, event: Event, settings: Settings
) -> str:
    """The PSP's final word on an adopted invoice refund we hold pending (or failed: a success
    is the PSP's fact and always posts, once)."""
    subscription, invoice = invoices.lock_pair(conn, invoice_id)
    refund = lock(conn, refund_id)
    assert refund is not None
    status = _psp_status(event)
    if status == "succeeded" and refund.status != Status.SUCCEEDED:
        amount = _psp_amount(event) or refund.amount
        if amount != refund.amount:
            conn.execute(QUERIES["set_refund_amount"], {"refund_id": refund.id, "amount": amount})
        return _succeed_for_invoice(conn, subscription, invoice, refund.id, amount, settings)
    if refund.status != Status.PENDING:
        return f"skipped: refund already {refund.status}"
    if status == "failed":
        message = event.data.get("error_message")
        message = message if isinstance(message, str) else "refund failed at the payment provider"
        conn.execute(QUERIES["fail_refund"], {"refund_id": refund.id, "error_message": message})
        return "ok"
    return f"skipped: refund status {status or 'missing'}"


def _succeed_for_invoice(
    conn: db.Connection,
    subscription: model.Subscription,
    invoice: invoices.Invoice,
    refund_id: uuid.UUID,
    amount: int,
    settings: Settings,
) -> str:
    """The refund succeeded, giving back at most what is left of the invoice's money (what the PSP
    captured less the refunds that succeeded, a post-capture cancel's included): from
    platform:suspense what the invoice holds there (its automatic refund failed: a person paid it
    back in the dashboard; once suspense is drained, the failed automatic refund's discrepancy is
    resolved), else from revenue. More than is left is paid from platform:unallocated with a
    discrepancy. Only the invoice that paid for the subscription (paid, nothing kept in suspense),
    once paid back in full, cancels the subscription."""
    money = _invoice_money(conn, invoice.id)
    left = max(money.captured - _invoice_refunded(conn, invoice.id)[0], 0)  # this refund not yet succeeded
    conn.execute(QUERIES["succeed_refund"], {"refund_id": refund_id})
    covered = min(amount, left)
    from_suspense = min(covered, max(money.suspense, 0))
    posting = ledger.invoice_refund_succeeded(
        refund_id,
        invoice.currency,
        amount,
        invoice_id=invoice.id,
        from_suspense=from_suspense,
        from_revenue=covered - from_suspense,
    )
    if ledger.post(conn, posting) and amount > covered:
        discrepancies.open_one(
            conn,
            discrepancies.Kind.REFUND_UNMATCHED,
            f"refund {refund_id} of {amount} {invoice.currency} for invoice {invoice.id} gives back"
            f" {amount - covered} more than was left of it: paid from platform:unallocated",
            invoice_id=invoice.id,
            refund_id=refund_id,
            amount=amount - covered,
            currency=invoice.currency,
        )
    if from_suspense and from_suspense >= money.suspense:
        _resolve_failed_automatic_refunds(conn, invoice, refund_id)
    succeeded, _ = _invoice_refunded(conn, invoice.id)
    if invoice.status == invoices.Status.PAID and not money.kept and succeeded >= invoice.amount:
        commands.cancel_from_event(conn, subscription, settings, f"invoice {invoice.id} paid back in full")
    return "ok"


@dataclass(frozen=True)
class _InvoiceMoney:
    captured: int  # what the PSP took for the invoice
    suspense: int  # what of it platform:suspense holds
    kept: bool  # it has an automatic refund: its money was kept for nothing, not for the subscription


def _invoice_money(conn: db.Connection, invoice_id: uuid.UUID) -> _InvoiceMoney:
    row = conn.execute(QUERIES["invoice_money"], {"invoice_id": invoice_id}).fetchone()
    assert row is not None  # the invoice is locked by the caller
    return _InvoiceMoney(int(row[0]), int(row[1]), bool(row[2]))


def _resolve_failed_automatic_refunds(
    conn: db.Connection, invoice: invoices.Invoice, refund_id: uuid.UUID
) -> None:
    """The suspense the failed automatic refunds left is drained: a person gave the money back."""
    for (failed_id,) in conn.execute(
        QUERIES["failed_automatic_refunds_of_invoice"], {"invoice_id": invoice.id}
    ).fetchall():
        discrepancies.resolve_about(
            conn,
            discrepancies.Kind.AUTOMATIC_REFUND_FAILED,
            refund_id=failed_id,
            by=discrepancies.RESOLVED_BY_WORKER,
            note=f"given back at the payment provider by refund {refund_id}",
        )


def _invoice_refunded(conn: db.Connection, invoice_id: uuid.UUID) -> tuple[int, int]:
    """What the refunds of an invoice gave back (succeeded), and what they give or may give back
    (not failed)."""
    row = conn.execute(QUERIES["invoice_refunded"], {"invoice_id": invoice_id}).fetchone()
    assert row is not None  # aggregates always return their row
    return int(row[0]), int(row[1])


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

    A success is the PSP's fact and always posts, once: for another amount than ours, or after we
    held the refund failed, it posts what the PSP did and opens a discrepancy. Otherwise a
    terminal refund ignores further events.
    """
    if status == "succeeded" and refund.status != Status.SUCCEEDED:
        psp_amount = amount if isinstance(amount, int) and not isinstance(amount, bool) else refund.amount
        if refund.status == Status.FAILED:
            return _succeeded_after_failure(conn, order, refund, psp_amount)
        if psp_amount != refund.amount:
            return _succeeded_for_another_amount(conn, order, refund, psp_amount)
        return _succeed(conn, order, refund)
    if refund.status != Status.PENDING:
        return f"skipped: refund already {refund.status}"
    if status == "failed":
        _fail(conn, order, refund, error_message or "refund failed at the payment provider")
        return "ok"
    return f"skipped: refund status {status or 'missing'}"


def _succeed(conn: db.Connection, order: orders.Order, refund: Refund, *, explained: bool = False) -> str:
    """One transaction (the caller's): the refund succeeded, posted, and for its items only:
    licenses revoked, transfers reversed; the order's status follows. A refund with no items (made
    at the PSP) takes every item left when its amount is theirs. Items a dispute already took are
    paid from platform:unallocated (the buyer got the money twice: a discrepancy); a refund that
    matches no items too."""
    params = {"refund_id": refund.id, "order_id": order.id, "currency": order.currency}
    conn.execute(QUERIES["succeed_refund"], params)
    if not _has_items(conn, refund):
        _take_remaining_items(conn, order, refund)
    taken = _items_of(conn, order, refund)
    from_sellers = orders.by_account(order, [i for i in taken if not i.disputed])
    ledger.post(
        conn,
        ledger.refund_succeeded(
            refund.id, order.currency, refund.amount, from_sellers=from_sellers, order_id=order.id
        ),
    )
    if taken:
        conn.execute(QUERIES["revoke_licenses"], params)
        _reverse_transfers(conn, order, refund)
    if not explained:  # the caller opened the discrepancy that says why
        _ask_about_what_sellers_did_not_cover(conn, order, refund, taken)
    now = orders.follow_facts(conn, order.id)
    log.info("refund %s succeeded: order %s %s", refund.hyperswitch_refund_id, order.id, now)
    return "ok"


def _items_of(conn: db.Connection, order: orders.Order, refund: Refund) -> list[orders.Item]:
    ids = {row[0] for row in conn.execute(QUERIES["refund_item_ids"], {"refund_id": refund.id})}
    return [item for item in orders.items(conn, order.id) if item.id in ids]


def _ask_about_what_sellers_did_not_cover(
    conn: db.Connection, order: orders.Order, refund: Refund, taken: list[orders.Item]
) -> None:
    disputed = sum(i.amount for i in taken if i.disputed)
    if not taken:
        kind = discrepancies.Kind.REFUND_UNMATCHED
        detail = (
            f"refund {refund.hyperswitch_refund_id} of {refund.amount} {order.currency} for order {order.id}"
            " matches no items left: paid from platform:unallocated, no seller debited"
        )
    elif disputed:
        kind = discrepancies.Kind.REFUND_OF_DISPUTED_ITEMS
        detail = (
            f"refund {refund.hyperswitch_refund_id} gave back {disputed} {order.currency} of items of order"
            f" {order.id} that a dispute already took: the buyer may be paid twice (platform:unallocated)"
        )
    else:
        return
    discrepancies.open_one(
        conn,
        kind,
        detail,
        order_id=order.id,
        refund_id=refund.id,
        amount=refund.amount if not taken else disputed,
        currency=order.currency,
    )


def _succeeded_after_failure(conn: db.Connection, order: orders.Order, refund: Refund, amount: int) -> str:
    """We held it failed (its items free again), the PSP refunded it: its items stay its own when
    no other refund took them meanwhile, else it is posted like a refund made at the PSP."""
    detail = (
        f"refund {refund.hyperswitch_refund_id} was failed here but the payment provider refunded"
        f" {amount} {order.currency} for order {order.id}: posted as succeeded"
    )
    taken_since = any(i.refunded or i.in_flight for i in _items_of(conn, order, refund))
    keep = amount == refund.amount and not taken_since
    kind = discrepancies.Kind.REFUND_SUCCEEDED_AFTER_FAILED
    return _succeed_as_the_psp_says(conn, order, refund, amount, kind, detail, keep_items=keep)


def _succeeded_for_another_amount(
    conn: db.Connection, order: orders.Order, refund: Refund, amount: int
) -> str:
    """The PSP refunded another amount than we asked: which items it covers is unknown."""
    detail = (
        f"refund {refund.hyperswitch_refund_id}: the payment provider refunded {amount} {order.currency},"
        f" we asked {refund.amount} for order {order.id}"
    )
    kind = discrepancies.Kind.REFUND_AMOUNT_MISMATCH
    return _succeed_as_the_psp_says(conn, order, refund, amount, kind, detail, keep_items=False)


def _succeed_as_the_psp_says(
    conn: db.Connection,
    order: orders.Order,
    refund: Refund,
    amount: int,
    kind: discrepancies.Kind,
    detail: str,
    *,
    keep_items: bool,
) -> str:
    """A success our books did not expect: a discrepancy says why, the refund records the amount the
    PSP refunded, and without its items it is posted like a refund made at the PSP."""
    discrepancies.open_one(
        conn, kind, detail, order_id=order.id, refund_id=refund.id, amount=amount, currency=order.currency
    )
    if not keep_items:
        conn.execute(QUERIES["drop_refund_items"], {"refund_id": refund.id})
    conn.execute(QUERIES["set_refund_amount"], {"refund_id": refund.id, "amount": amount})
    return _succeed(conn, order, dataclasses.replace(refund, amount=amount), explained=True)


def _has_items(conn: db.Connection, refund: Refund) -> bool:
    row = conn.execute(QUERIES["refund_item_count"], {"refund_id": refund.id}).fetchone()
    return bool(row and row[0])


def _take_remaining_items(conn: db.Connection, order: orders.Order, refund: Refund) -> None:
    """A refund without items (made at the PSP, or from before refunds had items) refunds the
    items left (not refunded, not in flight, not charged back) when it is for exactly their amount."""
    left = _items_left(conn, order)
    if left and sum(i.amount for i in left) == refund.amount:
        _add_items(conn, refund.id, [i.id for i in left])


def _items_left(conn: db.Connection, order: orders.Order) -> list[orders.Item]:
    """The items nothing took yet: not refunded, not in flight, not charged back."""
    return [i for i in orders.items(conn, order.id) if not (i.refunded or i.in_flight or i.charged_back)]


def _reverse_transfers(conn: db.Connection, order: orders.Order, refund: Refund) -> None:
    """Per seller, the open transfer keeps the unrefunded items' amount, the reversed ones the rest."""
    conn.execute(QUERIES["reverse_transfers"], {"refund_id": refund.id, "order_id": order.id})


def _fail(conn: db.Connection, order: orders.Order, refund: Refund, message: str) -> None:
    conn.execute(QUERIES["fail_refund"], {"refund_id": refund.id, "error_message": message})
    now = orders.follow_facts(conn, order.id)
    log.warning("refund %s failed: %s; order %s %s", refund.hyperswitch_refund_id, message, order.id, now)


def _set_order_status(conn: db.Connection, order_id: uuid.UUID, status: orders.Status) -> None:
    conn.execute(QUERIES["set_order_status"], {"order_id": order_id, "status": status})
