"""The ledger: one journal that every money movement writes, and the only writer of seller money.

A movement is a transaction of entries that sum to zero per currency (Postgres refuses anything
else at commit, and refuses any UPDATE or DELETE); its `key` makes a replay, a synthetic delivery
or a race post it once. An account's balance is the sum of its entries; positive = money held.

    world                    outside money (cards, banks); negative as money comes in
    seller:<id>:held         earnings inside the refund window or under an open dispute
    seller:<id>:available    payable; negative = a debt the next earnings pay first
    seller:<id>:in_transit   in a payout that is not final yet
    platform:revenue         paid subscription invoices
    platform:suspense        money captured that we must give back (its automatic refund)
    platform:unallocated     money the PSP moved that no rule could assign (each opens a discrepancy)

The functions below build each movement of DESIGN.md's "What posts what"; the state machines
call `post` with one in the same transaction as their state change. `seller_balances` is this
module's read model, grown by the same `ledger_post` call that posts (migrations/0020_ledger_post.sql).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from psycopg.rows import dict_row

from veza_worker import db

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

WORLD = "world"
REVENUE = "platform:revenue"
SUSPENSE = "platform:suspense"
UNALLOCATED = "platform:unallocated"


class Bucket(StrEnum):
    """Where a seller's money of one order stands."""

    HELD = "held"
    AVAILABLE = "available"
    IN_TRANSIT = "in_transit"


class Kind(StrEnum):
    ORDER_PAID = "order_paid"
    PAYMENT_KEPT = "payment_kept"  # captured for a failed order/invoice, or a partial capture
    REFUND = "refund"
    AUTOMATIC_REFUND = "automatic_refund"
    INVOICE_PAID = "invoice_paid"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_CLOSED = "dispute_closed"  # won or cancelled: the opening's exact reverse
    HOLD_RELEASED = "hold_released"
    PAYOUT_CREATED = "payout_created"  # available → in_transit, before the PSP call
    PAYOUT_PAID = "payout_paid"  # in_transit → world
    PAYOUT_FAILED = "payout_failed"  # failed, cancelled, expired, ineligible: in_transit → available
    PAYOUT_REVERSED = "payout_reversed"  # the bank returned a paid payout: world → available
    CORRECTION = "correction"
    OPENING_BALANCE = "opening_balance"


def seller(seller_id: uuid.UUID, bucket: Bucket) -> str:
    return f"seller:{seller_id}:{bucket}"


@dataclass(frozen=True)
class Posting:
    """One movement: its key, kind, the objects it names, and its entries (account → amount)."""

    key: str
    kind: Kind
    currency: str
    entries: Mapping[str, int]
    order_id: uuid.UUID | None = None
    refund_id: uuid.UUID | None = None
    dispute_id: str | None = None
    invoice_id: uuid.UUID | None = None
    payout_id: uuid.UUID | None = None
    corrects: str | None = None

    def __post_init__(self) -> None:
        if sum(self.entries.values()) != 0:  # Postgres would refuse it at commit; say so where it is built
            raise ValueError(f"unbalanced posting {self.key}: {dict(self.entries)}")

    @property
    def legs(self) -> dict[str, int]:
        """The entries that move something."""
        return {account: amount for account, amount in self.entries.items() if amount}


def sum_into(entries: dict[str, int], account: str, amount: int) -> None:
    entries[account] = entries.get(account, 0) + amount


# -- who caused it ----------------------------------------------------------------------------------

_log_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("ledger_log_id", default=None)


@contextlib.contextmanager
def caused_by(log_id: int | None) -> Iterator[None]:
    """Postings made inside name the delivery (audit row) that caused them."""
    token = _log_id.set(log_id)
    try:
        yield
    finally:
        _log_id.reset(token)


# -- writing ----------------------------------------------------------------------------------------


def post(conn: db.Connection, posting: Posting) -> bool:
    """Post a movement in the caller's transaction; False when its key was already posted (or it
    moves nothing)."""
    legs = posting.legs
    if not legs:
        return False
    params = {
        "key": posting.key,
        "kind": posting.kind,
        "currency": posting.currency,
        "order_id": posting.order_id,
        "refund_id": posting.refund_id,
        "dispute_id": posting.dispute_id,
        "invoice_id": posting.invoice_id,
        "payout_id": posting.payout_id,
        "log_id": _log_id.get(),
        "corrects": posting.corrects,
        "accounts": list(legs),
        "amounts": list(legs.values()),
    }
    row = conn.execute(QUERIES["post"], params).fetchone()
    posted = bool(row and row[0])
    if posted:
        log.debug("posted %s (%s): %s %s", posting.key, posting.kind, legs, posting.currency)
    return posted


def entries_of(conn: db.Connection, key: str) -> dict[str, int]:
    """A posted movement's entries (one currency per movement), empty when it was never posted."""
    return {
        account: amount for account, _currency, amount in conn.execute(QUERIES["entries_of"], {"key": key})
    }


def order_held(conn: db.Connection, order_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """What each seller of an order still holds from it."""
    return {
        seller_id: amount
        for seller_id, _cur, amount in conn.execute(QUERIES["order_held"], {"order_id": order_id})
    }


# -- what posts what --------------------------------------------------------------------------------


def order_paid(order_id: uuid.UUID, currency: str, total: int, by_seller: Mapping[uuid.UUID, int]) -> Posting:
    """world -T, each seller's items into held; items that do not add up to T: unallocated."""
    entries = {WORLD: -total}
    for seller_id, amount in by_seller.items():
        sum_into(entries, seller(seller_id, Bucket.HELD), amount)
    sum_into(entries, UNALLOCATED, total - sum(by_seller.values()))
    return Posting(f"order:{order_id}:paid", Kind.ORDER_PAID, currency, entries, order_id=order_id)


def payment_kept(
    refund_id: uuid.UUID,
    currency: str,
    amount: int,
    *,
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
    source: str = WORLD,
) -> Posting:
    """A payment captured for nothing, held in suspense until its automatic refund succeeds: from
    `world`, or from revenue when its invoice was counted paid first."""
    entries = {source: -amount, SUSPENSE: amount}
    return _of_refund(refund_id, "kept", Kind.PAYMENT_KEPT, currency, entries, order_id, invoice_id)


def automatic_refund_succeeded(
    refund_id: uuid.UUID,
    currency: str,
    amount: int,
    *,
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
) -> Posting:
    """The suspense drains: the money went back."""
    entries = {SUSPENSE: -amount, WORLD: amount}
    return _of_refund(refund_id, "succeeded", Kind.AUTOMATIC_REFUND, currency, entries, order_id, invoice_id)


def _of_refund(
    refund_id: uuid.UUID,
    step: str,
    kind: Kind,
    currency: str,
    entries: dict[str, int],
    order_id: uuid.UUID | None,
    invoice_id: uuid.UUID | None,
) -> Posting:
    """A step of one refund's money (`kept`, `succeeded`), keyed once per refund and step."""
    key = f"refund:{refund_id}:{step}"
    return Posting(
        key, kind, currency, entries, order_id=order_id, invoice_id=invoice_id, refund_id=refund_id
    )


def refund_succeeded(
    refund_id: uuid.UUID,
    currency: str,
    amount: int,
    *,
    from_sellers: Mapping[str, int],
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
) -> Posting:
    """world +amount, paid by the sellers' accounts given (item amounts, by account); for an
    invoice by revenue; what neither covers, by unallocated."""
    entries = _paid_out(amount, from_sellers, invoice_id)
    return _of_refund(refund_id, "succeeded", Kind.REFUND, currency, entries, order_id, invoice_id)


def invoice_refund_succeeded(
    refund_id: uuid.UUID,
    currency: str,
    amount: int,
    *,
    invoice_id: uuid.UUID,
    from_suspense: int,
    from_revenue: int,
) -> Posting:
    """world +amount for a refund of an invoice's payment: from platform:suspense what the invoice
    holds there (money kept for nothing), from revenue what it paid; more than the invoice has
    left, from unallocated (a discrepancy says why)."""
    entries = {WORLD: amount}
    sum_into(entries, SUSPENSE, -from_suspense)
    sum_into(entries, REVENUE, -from_revenue)
    sum_into(entries, UNALLOCATED, from_suspense + from_revenue - amount)
    return _of_refund(refund_id, "succeeded", Kind.REFUND, currency, entries, None, invoice_id)


def _paid_out(amount: int, from_sellers: Mapping[str, int], invoice_id: uuid.UUID | None) -> dict[str, int]:
    """`amount` leaves for the world: from the sellers' accounts given, the rest from revenue (an
    invoice's money) or unallocated (an order's money no items cover)."""
    entries = {WORLD: amount}
    for account, taken in from_sellers.items():
        sum_into(entries, account, -taken)
    rest = amount - sum(from_sellers.values())
    sum_into(entries, REVENUE if invoice_id is not None else UNALLOCATED, -rest)
    return entries


def dispute_opened(
    dispute_id: str,
    currency: str,
    amount: int,
    *,
    from_sellers: Mapping[str, int],
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
) -> Posting:
    """The bank takes the dispute's amount: from the items' sellers (order) or revenue (invoice);
    a difference between the amount and the items is unallocated."""
    return Posting(
        f"dispute:{dispute_id}:opened",
        Kind.DISPUTE_OPENED,
        currency,
        _paid_out(amount, from_sellers, invoice_id),
        dispute_id=dispute_id,
        order_id=order_id,
        invoice_id=invoice_id,
    )


def dispute_closed(
    dispute_id: str,
    currency: str,
    entries: Mapping[str, int],
    *,
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
) -> Posting:
    """Won or cancelled: the money comes back from the bank (entries: the opening's reverse, with
    items refunded meanwhile given to whoever paid their refund)."""
    return Posting(
        f"dispute:{dispute_id}:closed",
        Kind.DISPUTE_CLOSED,
        currency,
        entries,
        dispute_id=dispute_id,
        order_id=order_id,
        invoice_id=invoice_id,
    )


def invoice_paid(invoice_id: uuid.UUID, currency: str, amount: int) -> Posting:
    entries = {WORLD: -amount, REVENUE: amount}
    return Posting(f"invoice:{invoice_id}:paid", Kind.INVOICE_PAID, currency, entries, invoice_id=invoice_id)


def hold_released(order_id: uuid.UUID, currency: str, held: Mapping[uuid.UUID, int]) -> Posting:
    entries: dict[str, int] = {}
    for seller_id, amount in held.items():
        sum_into(entries, seller(seller_id, Bucket.HELD), -amount)
        sum_into(entries, seller(seller_id, Bucket.AVAILABLE), amount)
    return Posting(f"order:{order_id}:released", Kind.HOLD_RELEASED, currency, entries, order_id=order_id)


def payout_created(payout_id: uuid.UUID, seller_id: uuid.UUID, currency: str, amount: int) -> Posting:
    entries = {seller(seller_id, Bucket.AVAILABLE): -amount, seller(seller_id, Bucket.IN_TRANSIT): amount}
    return Posting(f"payout:{payout_id}:created", Kind.PAYOUT_CREATED, currency, entries, payout_id=payout_id)


def payout_paid(payout_id: uuid.UUID, seller_id: uuid.UUID, currency: str, amount: int) -> Posting:
    entries = {seller(seller_id, Bucket.IN_TRANSIT): -amount, WORLD: amount}
    return Posting(f"payout:{payout_id}:paid", Kind.PAYOUT_PAID, currency, entries, payout_id=payout_id)


def payout_failed(payout_id: uuid.UUID, seller_id: uuid.UUID, currency: str, amount: int) -> Posting:
    entries = {seller(seller_id, Bucket.IN_TRANSIT): -amount, seller(seller_id, Bucket.AVAILABLE): amount}
    return Posting(f"payout:{payout_id}:failed", Kind.PAYOUT_FAILED, currency, entries, payout_id=payout_id)


def payout_reversed(payout_id: uuid.UUID, seller_id: uuid.UUID, currency: str, amount: int) -> Posting:
    entries = {WORLD: -amount, seller(seller_id, Bucket.AVAILABLE): amount}
    return Posting(
        f"payout:{payout_id}:reversed", Kind.PAYOUT_REVERSED, currency, entries, payout_id=payout_id
    )


# -- reading ----------------------------------------------------------------------------------------


def statement(
    conn: db.Connection, seller_id: uuid.UUID, *, currency: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """`seller-statement`: balances by currency and the seller's entries, newest first."""
    accounts = [seller(seller_id, bucket) for bucket in Bucket]
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        balances = cur.execute(
            QUERIES["seller_balances"], {"seller_id": seller_id, "currency": currency}
        ).fetchall()
        entries = cur.execute(
            QUERIES["seller_entries"], {"accounts": accounts, "currency": currency, "limit": limit}
        ).fetchall()
    return {
        "seller_id": str(seller_id),
        "balances": {
            b["currency"]: {"held": b["held"], "available": b["available"], "in_transit": b["in_transit"]}
            for b in balances
        },
        "entries": entries,
    }
