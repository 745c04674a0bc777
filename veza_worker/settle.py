"""settle: the books checked against the PSP's own lists, both ways.

The reconciler asks about rows *we* hold as stuck; money the PSP moved that we never heard of
(a webhook it gave up on, a refund made in its dashboard, a payment cancelled after capture) stays
invisible to it. `settle` walks every payment and refund the PSP created in a window, one page at a
time (memory stays flat), compares each with our row in one statement per page, and:

- applies what our handlers can apply as a synthetic delivery (recorded in the webhook log like
  the reconciler's, so audit rows and handlers are reused): a succeeded payment we hold pending
  or failed, a refund made at the PSP, a refund final there and pending here, a payment cancelled
  after capture;
- opens a discrepancy for the rest: an amount or currency that differs, a payment id of our
  making that nothing of ours holds, a refund we hold succeeded that the PSP holds failed, a
  payment we hold paid that the PSP failed.

It counts only what this run applied and opened; a finding already opened once is not opened
again, so a second run over the same window changes nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from psycopg.rows import class_row

from veza_worker import automatic_refunds, db, discrepancies, errors, hyperswitch, orders, reconcile, webhooks
from veza_worker.discrepancies import Kind
from veza_worker.settings import Settings
from veza_worker.subscriptions import invoices

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

WINDOW = timedelta(days=3)  # the daily sweep's window: a lost webhook is found three times
PAGE = 100  # the most either list returns at once
OUR_PAYMENT_ID = re.compile(r"pay_[a-z2-7]{26}")  # hyperswitch.merchant_id("pay", …)

TAKEN = frozenset({"succeeded", "partially_captured"})  # the PSP holds (some of) the money
NOT_TAKEN = frozenset({"failed", "cancelled", "expired"})  # final, no money moved
# What we hold as paid: an order's money moved (it may have left again by a refund or a dispute).
PAID = frozenset(
    {
        orders.Status.COMPLETED,
        orders.Status.REFUND_PENDING,
        orders.Status.REFUNDED,
        orders.Status.DISPUTED,
        orders.Status.CHARGED_BACK,
        invoices.Status.PAID,
    }
)
# An order whose money a post-capture cancel still has to give back.
CANCELLABLE_AFTER_CAPTURE = frozenset(
    {orders.Status.COMPLETED, orders.Status.REFUND_PENDING, orders.Status.DISPUTED}
)
CANCELLED_POST_CAPTURE = "payment_cancelled_post_capture"  # its handler lives in webhooks.HANDLERS


@dataclass(frozen=True)
class OurPayment:
    """What we hold for a PSP payment id: its order or its invoice, or neither."""

    payment_id: str
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    status: str | None
    amount: int | None
    currency: str | None
    cancelled_after_capture: bool  # its post-capture cancel was applied already
    refunded_automatically: bool

    @property
    def held(self) -> bool:
        return self.order_id is not None or self.invoice_id is not None

    @property
    def psp_id(self) -> str:
        return self.payment_id

    @property
    def names(self) -> discrepancies.Objects:
        return _names(order_id=self.order_id, invoice_id=self.invoice_id)


@dataclass(frozen=True)
class OurRefund:
    """What we hold for a PSP refund id: the refund, else the order or invoice of its payment."""

    psp_refund_id: str
    refund_id: uuid.UUID | None
    status: str | None
    amount: int | None
    currency: str | None
    order_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    automatic: bool  # money we gave back on our own (automatic_refunds.py)

    @property
    def psp_id(self) -> str:
        return self.psp_refund_id

    @property
    def names(self) -> discrepancies.Objects:
        return _names(order_id=self.order_id, invoice_id=self.invoice_id, refund_id=self.refund_id)


def _names(**ids: uuid.UUID | None) -> discrepancies.Objects:
    """Our rows a finding is about, as a discrepancy names them."""
    return cast(discrepancies.Objects, {column: value for column, value in ids.items() if value is not None})


@dataclass(frozen=True)
class Apply:
    """Feed the PSP's object through the handlers as a delivery of `event_type`."""

    event_type: str


@dataclass(frozen=True)
class Open:
    """Open a discrepancy; `subject` names an object we do not hold by its PSP id."""

    kind: Kind
    detail: str
    subject: str = ""


Finding = Apply | Open | None


# -- deciding: pure functions ------------------------------------------------------------------------


def payment_finding(psp: Mapping[str, Any], ours: OurPayment) -> Finding:
    """What one PSP payment asks of us, given what we hold for it."""
    psp_id, status = ours.payment_id, str(psp.get("status"))
    if not ours.held:
        if OUR_PAYMENT_ID.fullmatch(psp_id) is None:
            return None  # not ours: another integration on the same merchant account
        return Open(Kind.PAYMENT_UNKNOWN, _unknown_payment(psp), subject=psp_id)
    if (psp.get("amount"), psp.get("currency")) != (ours.amount, ours.currency):
        detail = (
            f"payment {psp_id}: the payment provider holds {psp.get('amount')} {psp.get('currency')},"
            f" we hold {ours.amount} {ours.currency}"
        )
        return Open(Kind.PAYMENT_AMOUNT_MISMATCH, detail)
    if status in TAKEN:
        fresh = ours.status == "pending" or (ours.status == "failed" and not ours.refunded_automatically)
        return Apply("payment_succeeded") if fresh else None
    if status == "cancelled_post_capture":
        return _cancelled_after_capture(ours)
    if status in NOT_TAKEN:
        if ours.status == "pending":
            return Apply(reconcile.PAYMENT_EVENTS[status])
        if ours.status in PAID:
            detail = (
                f"payment {psp_id}: we hold it paid ({ours.status}), the payment provider holds it {status}"
            )
            return Open(Kind.PAYMENT_NOT_PAID_AT_PSP, detail)
    return None  # not final at the PSP, or it agrees with us


def _cancelled_after_capture(ours: OurPayment) -> Finding:
    """The money went back after capture: a pending row fails; money we still hold as earned
    is reversed by the post-capture cancel's handler."""
    if ours.status == "pending":
        return Apply("payment_cancelled")
    if ours.order_id is not None and ours.status in CANCELLABLE_AFTER_CAPTURE:
        return Apply(CANCELLED_POST_CAPTURE)
    if ours.invoice_id is not None and ours.status == invoices.Status.PAID:
        # Whatever became of its subscription since (canceled by hand, ended): revenue still holds
        # the money until the cancel's own refund row says it went back.
        return None if ours.cancelled_after_capture else Apply(CANCELLED_POST_CAPTURE)
    return None


def _unknown_payment(psp: Mapping[str, Any]) -> str:
    return (
        f"payment {psp.get('payment_id')} ({psp.get('status')}, {psp.get('amount')} {psp.get('currency')})"
        " has an id of our making, but no order or invoice of ours holds it"
    )


def refund_finding(psp: Mapping[str, Any], ours: OurRefund) -> Finding:
    """What one PSP refund asks of us, given what we hold for it."""
    status = str(psp.get("status"))
    if ours.refund_id is None:
        return _made_at_psp(psp, ours, status)
    if psp.get("currency") != ours.currency:
        return Open(Kind.REFUND_AMOUNT_MISMATCH, _refund_differs(psp, ours))
    if status in reconcile.REFUND_EVENTS and ours.status == "pending":
        return Apply(reconcile.REFUND_EVENTS[status])
    if status == "succeeded" and ours.status == "failed":
        if ours.automatic:  # its money sits in suspense, and a retry may have given it back too
            return Open(
                Kind.REFUND_SUCCEEDED_AFTER_FAILED,
                automatic_refunds.succeeded_after_failed(ours.amount, ours.currency),
            )
        return Apply("refund_succeeded")  # its handler posts it and opens the discrepancy
    if status == "succeeded" and psp.get("amount") != ours.amount:
        return Open(Kind.REFUND_AMOUNT_MISMATCH, _refund_differs(psp, ours))
    if status == "failed" and ours.status == "succeeded":
        detail = (
            f"refund {ours.psp_refund_id}: we hold it succeeded ({ours.amount} {ours.currency} posted),"
            " the payment provider holds it failed"
        )
        return Open(Kind.REFUND_FAILED_AFTER_SUCCEEDED, detail)
    return None


def _made_at_psp(psp: Mapping[str, Any], ours: OurRefund, status: str) -> Finding:
    """A refund we never made: adopted once final when its payment is ours; of a payment id of
    our making that nothing holds, the payment is the finding."""
    if ours.order_id is not None or ours.invoice_id is not None:
        return Apply(reconcile.REFUND_EVENTS[status]) if status in reconcile.REFUND_EVENTS else None
    payment_id = str(psp.get("payment_id"))
    if OUR_PAYMENT_ID.fullmatch(payment_id) is None:
        return None
    detail = (
        f"refund {ours.psp_refund_id} ({status}, {psp.get('amount')} {psp.get('currency')}) of payment"
        f" {payment_id}, which has an id of our making, but no order or invoice of ours holds it"
    )
    return Open(Kind.PAYMENT_UNKNOWN, detail, subject=payment_id)


def _refund_differs(psp: Mapping[str, Any], ours: OurRefund) -> str:
    return (
        f"refund {ours.psp_refund_id}: the payment provider holds {psp.get('amount')} {psp.get('currency')}"
        f" {psp.get('status')}, we hold {ours.amount} {ours.currency} {ours.status}"
    )


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[since, until] from ISO 8601 times (naive ones are UTC); by default the last WINDOW."""
    end = _parse("--until", until) if until else now
    start = _parse("--since", since) if since else end - WINDOW
    if start > end:
        raise errors.DomainError(f"--since {start.isoformat()} is after --until {end.isoformat()}")
    return start, end


def _parse(option: str, value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise errors.DomainError(f"{option}: not an ISO 8601 time: {value!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# -- walking the lists -------------------------------------------------------------------------------


@dataclass
class Counts:
    payments_seen: int = 0
    refunds_seen: int = 0
    applied: int = 0
    discrepancies: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "payments_seen": self.payments_seen,
            "refunds_seen": self.refunds_seen,
            "applied": self.applied,
            "discrepancies": dict(sorted(self.discrepancies.items())),
        }
        return {**out, "errors": self.errors} if self.errors else out


def verdict(counts: dict[str, Any]) -> str | None:
    """The command's exit 1: objects whose comparison failed in our code (the log says which)."""
    failed = counts.get("errors", 0)
    return f"{failed} objects could not be compared and were rolled back; see the log" if failed else None


def run(
    conn: db.Connection,
    client: hyperswitch.Client,
    settings: Settings,
    *,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, Any]:
    """One pass over the PSP's payments, then its refunds, created in the window."""
    start, end = window(since, until, datetime.now(UTC))
    counts = Counts()
    try:
        for page in _payment_pages(client, start, end):
            counts.payments_seen += len(page)
            _compare(conn, settings, PAYMENTS, page, counts)
        for page in _refund_pages(client, start, end):
            counts.refunds_seen += len(page)
            _compare(conn, settings, REFUNDS, page, counts)
    except errors.HyperswitchUnauthorized as exc:
        log.error("settle: the payment provider refused our key (%s): check HYPERSWITCH_API_KEY", exc)
        raise errors.PaymentProviderUnavailable("payment provider unavailable, will be reconciled") from exc
    except errors.HyperswitchUnavailable as exc:
        log.warning("settle stopped: the payment provider is unavailable: %s", exc)
        raise errors.PaymentProviderUnavailable("payment provider unavailable, will be reconciled") from exc
    except errors.HyperswitchRejected as exc:
        raise errors.DomainError(f"the payment provider refused the list: {exc}") from exc
    document = counts.document()
    log.info("settle %s..%s: %s", start.isoformat(), end.isoformat(), document)
    return document


Fetch = Callable[[int, dict[str, Any] | None], list[dict[str, Any]]]  # (offset, last object) → page


def _pages(fetch: Fetch) -> Iterator[list[dict[str, Any]]]:
    """A list, page by page, until a page comes back short."""
    offset, last = 0, None
    while True:
        page = fetch(offset, last)
        if page:
            yield page
        if len(page) < PAGE:
            return
        offset, last = offset + len(page), page[-1]


def _payment_pages(
    client: hyperswitch.Client, start: datetime, end: datetime
) -> Iterator[list[dict[str, Any]]]:
    """Newest first; each next page starts after the last payment of the one before."""
    return _pages(
        lambda _offset, last: client.list_payments(
            created_gte=start,
            created_lte=end,
            starting_after=None if last is None else str(last.get("payment_id")),
            limit=PAGE,
        )
    )


def _refund_pages(
    client: hyperswitch.Client, start: datetime, end: datetime
) -> Iterator[list[dict[str, Any]]]:
    return _pages(
        lambda offset, _last: client.list_refunds(start_time=start, end_time=end, offset=offset, limit=PAGE)
    )


@dataclass(frozen=True)
class Listed:
    """One of the PSP's lists as settle compares it: the id field, the statement that reads our
    rows for a page, the row it reads, and what one object asks of us."""

    id_field: str
    query: str
    row: type[OurPayment] | type[OurRefund]
    content_type: str
    finding: Callable[[Mapping[str, Any], Any], Finding]


PAYMENTS = Listed("payment_id", "our_payments", OurPayment, "payment_details", payment_finding)
REFUNDS = Listed("refund_id", "our_refunds", OurRefund, "refund_details", refund_finding)


def _compare(
    conn: db.Connection, settings: Settings, listed: Listed, page: list[dict[str, Any]], counts: Counts
) -> None:
    """One page: our rows for all of it in one statement, then each finding in its own transaction."""
    objects = {obj[listed.id_field]: obj for obj in page if isinstance(obj.get(listed.id_field), str)}
    params = {"ids": list(objects), "payment_ids": [str(obj.get("payment_id")) for obj in objects.values()]}
    with conn.transaction(), conn.cursor(row_factory=class_row(listed.row)) as cur:
        held: list[Any] = cur.execute(QUERIES[listed.query], params).fetchall()
    for ours in held:
        psp = objects[ours.psp_id]
        _act(conn, settings, listed.finding(psp, ours), psp, listed.content_type, ours.names, counts)


def _act(
    conn: db.Connection,
    settings: Settings,
    finding: Finding,
    psp: dict[str, Any],
    content_type: str,
    names: discrepancies.Objects,
    counts: Counts,
) -> None:
    """Apply or open one finding in its own transaction; counted once it has committed."""
    if finding is None:
        return
    try:
        with conn.transaction(), discrepancies.counting() as opened:
            applied = _apply_or_open(conn, settings, finding, psp, content_type, names)
    except Exception:  # one object must not stop the walk; it is rolled back, logged and counted
        log.exception("settle: %s %s failed and was rolled back", content_type, names)
        counts.errors += 1
        return
    counts.applied += applied
    counts.discrepancies.update(opened)


def _apply_or_open(
    conn: db.Connection,
    settings: Settings,
    finding: Apply | Open,
    psp: dict[str, Any],
    content_type: str,
    names: discrepancies.Objects,
) -> int:
    if isinstance(finding, Apply):
        log_id, result = webhooks.apply_synthetic(conn, settings, finding.event_type, content_type, psp)
        log.info("settle: %s applied as %s: %r (log_id=%s)", names, finding.event_type, result, log_id)
        return 1 if result == "ok" else 0
    amount, currency = psp.get("amount"), psp.get("currency")
    about: dict[str, Any] = {
        "subject": finding.subject,
        "amount": amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        "currency": currency if isinstance(currency, str) else None,
    }
    discrepancies.open_one(conn, finding.kind, finding.detail, once=True, **about, **names)
    return 0
