"""The automatic-refund outbox: money we must give back, sent as soon as the change that owes it commits.

A handler that finds money we must not keep (a late success for a failed order or invoice, a
partial capture) calls `open_refund` in its own transaction: the refund row is the outbox. The
entry point that ran the handler enqueues `send` for it once that transaction has committed
(`enqueue_after_commit`); the `automatic_refunds` sweep (`send_unsent`) sends what that missed: a
lost message, a PSP that was down. A send holds the row (FOR UPDATE SKIP LOCKED) across its PSP
call and marks it submitted in the same transaction, and every try sends the same refund_id, so
two senders at once never refund twice. The PSP's final word (`settle`) changes the refund row
alone: no order, balance or license moves.

In the ledger, opening one puts the captured money in platform:suspense (from `world`, or from
platform:revenue for an invoice already counted paid); its success drains it back to `world`. A
refund the PSP refuses or fails leaves the money in suspense and opens a discrepancy.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from psycopg.pq import TransactionStatus
from psycopg.rows import class_row

from veza_worker import db, discrepancies, errors, hyperswitch, ledger

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

BATCH = 50
OUTCOMES = ("sent", "rejected", "ambiguous")
KEY_REFUSED = "key_refused"  # counted as ambiguous: the row is left as after one
# The refunds opened inside the current `enqueue_after_commit` block; None outside one (a test, a
# CLI command), where the sweep sends them.
_opened: ContextVar[list[uuid.UUID] | None] = ContextVar("automatic_refunds_opened", default=None)


@dataclass(frozen=True)
class Unsent:
    """An automatic refund to send, with the payment it gives money back from."""

    id: uuid.UUID
    hyperswitch_refund_id: str
    amount: int
    reason: str
    note: str
    payment_id: str
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None

    @property
    def owner(self) -> str:
        return f"order {self.order_id}" if self.order_id else f"invoice {self.invoice_id}"


@dataclass(frozen=True)
class Locked:
    """An automatic refund row, locked by the caller's transaction."""

    id: uuid.UUID
    status: str
    hyperswitch_refund_id: str
    amount: int
    currency: str
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None


def open_refund(
    conn: db.Connection,
    *,
    amount: int,
    currency: str,
    note: str,
    invoice_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
    source: str = ledger.WORLD,
) -> bool:
    """Record, in the caller's transaction, a full refund nobody asked for, and post the captured
    money from `source` into suspense; it is sent once that transaction has committed. False when
    the order or invoice already has one."""
    refund_id = uuid.uuid4()
    params = {
        "id": refund_id,
        "order_id": order_id,
        "invoice_id": invoice_id,
        "amount": amount,
        "currency": currency,
        "note": note,
        "hyperswitch_refund_id": hyperswitch.merchant_id("ref", refund_id),
    }
    if conn.execute(QUERIES["insert_automatic_refund"], params).fetchone() is None:
        return False
    kept = ledger.payment_kept(
        refund_id, currency, amount, order_id=order_id, invoice_id=invoice_id, source=source
    )
    ledger.post(conn, kept)
    _opened_now(refund_id)
    return True


def _opened_now(refund_id: uuid.UUID) -> None:
    """Enqueued by the surrounding `enqueue_after_commit` block, if any, once committed."""
    opened = _opened.get()
    if opened is not None:
        opened.append(refund_id)


@contextmanager
def enqueue_after_commit(conn: db.Connection, enqueue: Callable[[uuid.UUID], Any]) -> Iterator[None]:
    """Around work that opens automatic refunds in transactions of its own: when it is over, enqueue
    each refund those transactions committed. Never sooner: a sender that ran before the commit
    would find no row, and the refund would wait for the sweep. A block that raises enqueues
    nothing; the sweep sends whatever it committed."""
    opened: list[uuid.UUID] = []
    token = _opened.set(opened)
    try:
        yield
    finally:
        _opened.reset(token)
    if opened:
        for refund_id in _committed(conn, opened):
            _enqueue(enqueue, refund_id)


def _committed(conn: db.Connection, refund_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """The refunds that exist now: outside any transaction, a read sees only what was committed."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("automatic refunds are enqueued after their transaction ends, not inside it")
    with conn.transaction():
        return [row[0] for row in conn.execute(QUERIES["committed_unsent"], {"ids": refund_ids})]


def _enqueue(enqueue: Callable[[uuid.UUID], Any], refund_id: uuid.UUID) -> None:
    try:
        enqueue(refund_id)
    except Exception as exc:  # Redis away: the row is committed, so the sweep sends it
        log.warning("automatic refund %s not enqueued, left for the sweep: %r", refund_id, exc)


# -- retrying a failed one -------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """An automatic refund that the PSP refused or failed, and the first one of its order or
    invoice (whose `kept` posting holds the money in suspense)."""

    id: uuid.UUID
    status: str
    automatic: bool
    amount: int
    currency: str
    note: str
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    first: uuid.UUID


def retry(conn: db.Connection, refund_id: uuid.UUID, *, by: str, note: str = "") -> dict[str, Any]:
    """`veza-worker retry-refund` (and the console's Retry), in the caller's transaction: a new
    automatic refund of a failed one's amount for the same order or invoice, sent once that
    transaction commits; the failed one stays as it was and its discrepancy is resolved. The
    money is in suspense already (the first refund's `kept`): the retry posts nothing until it
    succeeds, then drains it. Refused for anything but a failed automatic refund, and while
    another automatic refund of that order or invoice is pending or succeeded."""
    with conn.cursor(row_factory=class_row(Failed)) as cur:
        failed = cur.execute(QUERIES["lock_failed"], {"refund_id": refund_id}).fetchone()
    if failed is None:
        raise errors.NotFound(f"refund {refund_id} not found")
    if not failed.automatic or failed.status != "failed":
        what = f"{failed.status} automatic" if failed.automatic else f"{failed.status}, not automatic,"
        raise errors.DomainError(
            f"refund {refund_id} is a {what} refund: only a failed automatic one is retried"
        )
    new_id = uuid.uuid4()
    params = {
        "id": new_id,
        "order_id": failed.order_id,
        "invoice_id": failed.invoice_id,
        "amount": failed.amount,
        "currency": failed.currency,
        "note": failed.note,
        "hyperswitch_refund_id": hyperswitch.merchant_id("ref", new_id),
        "retry_of": failed.first,
    }
    if conn.execute(QUERIES["insert_retry"], params).fetchone() is None:
        live = conn.execute(QUERIES["live_automatic_refund"], params).fetchone()
        held = f"automatic refund {live[0]} is {live[1]}" if live else "another refund is in flight"
        owner = f"order {failed.order_id}" if failed.order_id else f"invoice {failed.invoice_id}"
        raise errors.DomainError(f"{owner}: {held}: refund {refund_id} not retried")
    _opened_now(new_id)
    discrepancies.resolve_about(
        conn,
        discrepancies.Kind.AUTOMATIC_REFUND_FAILED,
        refund_id=refund_id,
        by=by,
        note=f"retried as automatic refund {new_id}" + (f": {note}" if note else ""),
    )
    log.warning("automatic refund %s retried as %s by %s: %s", refund_id, new_id, by, note)
    return {
        "refund_id": str(new_id),
        "retry_of": str(refund_id),
        "order_id": failed.order_id,
        "invoice_id": failed.invoice_id,
        "amount": failed.amount,
        "currency": failed.currency,
        "status": "pending",
    }


# -- sending ----------------------------------------------------------------------------------------


def send(conn: db.Connection, client: hyperswitch.Client, refund_id: uuid.UUID) -> str | None:
    """POST one automatic refund: "sent", "rejected", "ambiguous" (sent again later with the same
    refund_id), KEY_REFUSED (401/403: left unsent, like an ambiguous one), or None when it was sent
    already or another sender holds it."""
    with conn.transaction():
        with conn.cursor(row_factory=class_row(Unsent)) as cur:
            refund = cur.execute(QUERIES["lock_unsent_refund"], {"refund_id": refund_id}).fetchone()
        if refund is None:
            return None
        # The row stays locked across the call: a second sender skips it, then finds it submitted.
        return _post(conn, client, refund)


def _post(conn: db.Connection, client: hyperswitch.Client, refund: Unsent) -> str:
    owner = {"order_id": str(refund.order_id)} if refund.order_id else {"invoice_id": str(refund.invoice_id)}
    try:
        client.create_refund(
            refund_id=refund.hyperswitch_refund_id,
            payment_id=refund.payment_id,
            amount=refund.amount,
            reason=refund.reason,
            idempotency_key=str(refund.id),
            metadata={**owner, "refund_id": str(refund.id), "note": refund.note},
        )
    except errors.HyperswitchUnauthorized as exc:
        hyperswitch.key_refused(f"automatic refund {refund.hyperswitch_refund_id}", exc)
        return KEY_REFUSED
    except errors.HyperswitchUnavailable as exc:
        log.warning(
            "automatic refund %s: create was ambiguous, sent again later: %s",
            refund.hyperswitch_refund_id,
            exc,
        )
        return "ambiguous"
    except errors.HyperswitchRejected as exc:
        _fail(
            conn, _lock(conn, refund.id), exc.message or exc.code, f"of payment {refund.payment_id} rejected"
        )
        return "rejected"
    conn.execute(QUERIES["mark_submitted"], {"refund_id": refund.id})
    log.info(
        "automatic refund %s of payment %s sent: %d",
        refund.hyperswitch_refund_id,
        refund.payment_id,
        refund.amount,
    )
    return "sent"


def send_unsent(
    conn: db.Connection, client: hyperswitch.Client | None, *, limit: int = BATCH
) -> dict[str, int]:
    """The sweep: send the automatic refunds not sent yet, oldest first. Without a PSP it succeeds
    only while none waits: a refund that cannot go out must show as an overdue sweep."""
    with conn.transaction():
        ids = [row[0] for row in conn.execute(QUERIES["unsent_automatic_refunds"], {"limit": limit})]
    counts = dict.fromkeys(OUTCOMES, 0)
    if client is None:
        if ids:
            raise errors.PaymentProviderNotConfigured(
                "payment provider not configured: automatic refunds wait"
            )
        return counts
    for refund_id in ids:
        outcome = send(conn, client, refund_id)
        if outcome == KEY_REFUSED:  # every other one would be refused the same: stop, exit 1
            counts["ambiguous"] += 1
            raise errors.PaymentProviderMisconfigured(hyperswitch.UNAVAILABLE, counts)
        if outcome is not None:
            counts[outcome] += 1
    return counts


# -- the PSP's final word ---------------------------------------------------------------------------


def settle(conn: db.Connection, refund_id: uuid.UUID, status: str, error_message: Any) -> str:
    """Apply the PSP's status to an automatic refund, in the caller's transaction."""
    refund = _lock(conn, refund_id)
    if refund.status == "failed" and status == "succeeded":
        discrepancies.open_one(
            conn,
            discrepancies.Kind.REFUND_SUCCEEDED_AFTER_FAILED,
            succeeded_after_failed(refund.amount, refund.currency),
            refund_id=refund.id,
            order_id=refund.order_id,
            invoice_id=refund.invoice_id,
            amount=refund.amount,
            currency=refund.currency,
            once=True,
        )
        return "skipped: refund already failed (a discrepancy says so)"
    if refund.status != "pending":
        return f"skipped: refund already {refund.status}"
    if status == "succeeded":
        conn.execute(QUERIES["succeed_refund"], {"refund_id": refund_id})
        back = ledger.automatic_refund_succeeded(
            refund.id, refund.currency, refund.amount, order_id=refund.order_id, invoice_id=refund.invoice_id
        )
        ledger.post(conn, back)
        log.info("automatic refund %s succeeded", refund.hyperswitch_refund_id)
        return "ok"
    if status == "failed":
        message = error_message if isinstance(error_message, str) else "refund failed at the payment provider"
        _fail(conn, refund, message, "failed")
        return "ok"
    return f"skipped: refund status {status or 'missing'}"


def succeeded_after_failed(amount: int | None, currency: str | None) -> str:
    """What a person reads when the PSP refunded an automatic refund we hold failed: nothing is
    posted on its own, since a retry or a dashboard refund may have given the money back as well."""
    return (
        f"an automatic refund of {amount} {currency} we hold failed succeeded at the payment"
        " provider: its money is still in suspense; if no retry or dashboard refund gave it back too,"
        " post a correction draining suspense, else recover the double refund"
    )


def _lock(conn: db.Connection, refund_id: uuid.UUID) -> Locked:
    with conn.cursor(row_factory=class_row(Locked)) as cur:
        refund = cur.execute(QUERIES["lock_refund"], {"refund_id": refund_id}).fetchone()
    assert refund is not None  # rows are never deleted
    return refund


def _fail(conn: db.Connection, refund: Locked, message: str, what: str) -> None:
    """The money stays in suspense: a person must give it back another way."""
    conn.execute(QUERIES["fail_refund"], {"refund_id": refund.id, "error_message": message})
    discrepancies.open_one(
        conn,
        discrepancies.Kind.AUTOMATIC_REFUND_FAILED,
        f"automatic refund {refund.hyperswitch_refund_id} {what}: {message}: money kept in suspense",
        refund_id=refund.id,
        order_id=refund.order_id,
        invoice_id=refund.invoice_id,
        amount=refund.amount,
        currency=refund.currency,
    )
