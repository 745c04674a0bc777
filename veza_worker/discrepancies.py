"""Discrepancies: "needs a human" is a row, not a log line.

Whatever automation cannot decide (money no rule could assign, a PSP answer that contradicts our
books, money we must give back that the PSP refused to return) opens one row per (kind, object),
still logs its ERROR line, and stays open until a person resolves it with a note.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import Any

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
) -> bool:
    """Open a discrepancy in the caller's transaction and log its ERROR line; False when that
    (kind, object) is already open."""
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
    opened = conn.execute(QUERIES["open_discrepancy"], params).fetchone() is not None
    names = " ".join(f"{k}={v}" for k, v in params.items() if v and k not in ("kind", "detail", "subject"))
    log.error("needs a human: %s: %s %s", kind, detail, names)
    return opened


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
