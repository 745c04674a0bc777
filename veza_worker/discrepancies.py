"""Discrepancies: "needs a human" is a row, not a log line.

Whatever automation cannot decide (money no rule could assign, a PSP answer that contradicts our
books, money we must give back that the PSP refused to return) opens one row per (kind, object),
still logs its ERROR line, and stays open until a person resolves it with a note.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, TypedDict

from psycopg.rows import dict_row

from veza_worker import db, errors

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)


class Kind(StrEnum):
    ORDER_ITEMS_MISMATCH = "order_items_mismatch"  # an order paid whose items do not add up to it
    REFUND_UNMATCHED = "refund_unmatched"  # a refund made at the PSP that matches no items left
    REFUND_OF_DISPUTED_ITEMS = "refund_of_disputed_items"  # the buyer was refunded while the bank took it
    REFUND_AMOUNT_MISMATCH = "refund_amount_mismatch"
    REFUND_SUCCEEDED_AFTER_FAILED = "refund_succeeded_after_failed"
    DISPUTE_UNASSIGNED = "dispute_unassigned"  # a dispute amount no items cover
    AUTOMATIC_REFUND_FAILED = "automatic_refund_failed"  # money we must give back is still ours
    PAYOUT_AMOUNT_MISMATCH = "payout_amount_mismatch"  # the PSP's payout is not the one we made
    PAYOUT_DUPLICATE_AT_PSP = "payout_duplicate_at_psp"  # two PSP payouts under one reference of ours
    PAYOUT_FAILED_AFTER_PAID = "payout_failed_after_paid"  # the PSP reported success, then a failure
    PAYOUT_UNKNOWN_TO_PSP = "payout_unknown_to_psp"  # a PSP id of ours the PSP no longer knows
    # The reconciler left a row to a person (reconcile.py): it raised on it GIVE_UP_AFTER_FAILURES
    # times, the PSP's answer ended `error:` when applied, or it is still not final after 5 answers.
    RECONCILE_GAVE_UP = "reconcile_gave_up"
    SYNTHETIC_DELIVERY_FAILED = "synthetic_delivery_failed"  # settle's too
    RECONCILE_STILL_PENDING = "reconcile_still_pending"
    # settle (settle.py): the PSP's lists disagree with our books in a way no handler can apply.
    PAYMENT_AMOUNT_MISMATCH = "payment_amount_mismatch"  # the PSP's amount or currency is not ours
    PAYMENT_UNKNOWN = "payment_unknown"  # a payment id of our making that no order or invoice holds
    PAYMENT_NOT_PAID_AT_PSP = "payment_not_paid_at_psp"  # we hold it paid, the PSP failed or cancelled it
    REFUND_FAILED_AFTER_SUCCEEDED = "refund_failed_after_succeeded"  # we hold it succeeded, the PSP failed


def open_one(
    conn: db.Connection,
    kind: Kind,
    detail: str,
    *,
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
    refund_id: uuid.UUID | None = None,
    dispute_id: str | None = None,
    payout_id: uuid.UUID | None = None,
    subject: str = "",
    amount: int | None = None,
    currency: str | None = None,
    once: bool = False,
) -> bool:
    """Open a discrepancy in the caller's transaction and log its ERROR line; False when that
    (kind, object) is already open, or with `once`, was ever opened (a finding that a later run
    sees again, like settle's, is not reopened after a person resolved it)."""
    params = {
        "kind": kind,
        "order_id": order_id,
        "invoice_id": invoice_id,
        "refund_id": refund_id,
        "dispute_id": dispute_id,
        "payout_id": payout_id,
        "subject": subject,
        "amount": amount,
        "currency": currency,
        "detail": detail,
    }
    query = "open_discrepancy_once" if once else "open_discrepancy"
    opened = conn.execute(QUERIES[query], params).fetchone() is not None
    counted = _opened_now.get()
    if opened and counted is not None:
        counted.append(kind)
    if opened or not once:
        names = " ".join(
            f"{k}={v}" for k, v in params.items() if v and k not in ("kind", "detail", "subject")
        )
        log.error("needs a human: %s: %s %s", kind, detail, names)
    return opened


_opened_now: contextvars.ContextVar[list[Kind] | None] = contextvars.ContextVar("opened_now", default=None)


@contextlib.contextmanager
def counting() -> Iterator[Counter[str]]:
    """The kinds of the discrepancies opened inside the block, counted once the block exits (the
    caller counts them only if its transaction commits): what `settle` reports."""
    opened: list[Kind] = []
    token = _opened_now.set(opened)
    found: Counter[str] = Counter()
    try:
        yield found
    finally:
        _opened_now.reset(token)
    found.update(opened)


class Objects(TypedDict, total=False):
    """Our rows a discrepancy names, as keyword arguments."""

    order_id: uuid.UUID
    invoice_id: uuid.UUID
    refund_id: uuid.UUID
    payout_id: uuid.UUID


RESOLVED_BY_WORKER = "veza-worker"


def close(conn: db.Connection, kind: Kind, note: str, **objects: Any) -> bool:
    """Close the open discrepancy of `kind` about `objects` that resolved itself (a stuck row the
    reconciler later settled), in the caller's transaction; False when none was open."""
    params = {"order_id": None, "invoice_id": None, "refund_id": None, "payout_id": None, **objects}
    params.update(kind=kind, note=note, by=RESOLVED_BY_WORKER)
    closed = conn.execute(QUERIES["close_resolved_itself"], params).fetchone()
    if closed is not None:
        log.info("discrepancy %d (%s) closed: %s", closed[0], kind, note)
    return closed is not None


def listing(conn: db.Connection, *, open_only: bool) -> list[dict[str, Any]]:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(QUERIES["list_discrepancies"], {"open_only": open_only}).fetchall()


def resolve(conn: db.Connection, discrepancy_id: int, *, by: str, note: str) -> dict[str, Any]:
    """Close an open discrepancy with who closed it and why."""
    if not by.strip() or not note.strip():
        raise errors.DomainError("resolving a discrepancy needs --by and a non-empty --note")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            QUERIES["resolve_discrepancy"], {"id": discrepancy_id, "by": by, "note": note}
        ).fetchone()
        if row is not None:
            log.info("discrepancy %d (%s) resolved by %s: %s", discrepancy_id, row["kind"], by, note)
            return row
        found = cur.execute(QUERIES["discrepancy_exists"], {"id": discrepancy_id}).fetchone()
    if found is None:
        raise errors.NotFound(f"discrepancy {discrepancy_id} not found")
    raise errors.DomainError(f"discrepancy {discrepancy_id} is already resolved")


def resolve_about(conn: db.Connection, kind: Kind, *, refund_id: uuid.UUID, by: str, note: str) -> int | None:
    """Close, in the caller's transaction, the open discrepancy of `kind` about a refund that a
    person has just acted on; its id, or None when none was open."""
    row = conn.execute(
        QUERIES["resolve_about"], {"kind": kind, "refund_id": refund_id, "by": by, "note": note}
    ).fetchone()
    if row is None:
        return None
    log.info("discrepancy %d (%s) resolved by %s: %s", row[0], kind, by, note)
    return int(row[0])
