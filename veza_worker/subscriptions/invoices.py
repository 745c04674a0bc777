"""An invoice's PSP payment: the invoice row, its create, its cancel, and its final word.

Each PSP payment is one invoice; a subscription has at most one pending invoice. Every writer
here locks the subscription, then the invoice (or is called holding both): a webhook, a sweep,
the reconciler and a cancel about one invoice take turns. The final word on a payment (a webhook, the
reconciler's synthetic event, an off-session charge's synchronous answer) goes through `settle`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from veza_worker import automatic_refunds, db, errors, events, hyperswitch, ledger
from veza_worker.subscriptions import model, periods
from veza_worker.subscriptions.model import Subscription

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

# Hyperswitch IntentStatus values that end a payment (src: IntentStatus::is_in_terminal_state).
FINAL_PAYMENT_STATUSES = frozenset(
    {"succeeded", "failed", "cancelled", "cancelled_post_capture", "expired", "partially_captured"}
)


class Status(StrEnum):
    """subscription_invoices.status: one PSP payment's outcome."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"


class Kind(StrEnum):
    """subscription_invoices.kind: what paying the invoice does."""

    FIRST = "first"  # starts a period on its plan (subscribe, trial end, a free plan's upgrade)
    RENEWAL = "renewal"  # pays for the period it was made for (dunning and recovery attempts too)
    PRORATION = "proration"  # an upgrade: switches the plan, the period does not move


@dataclass(frozen=True)
class Invoice:
    id: uuid.UUID
    subscription_id: uuid.UUID
    amount: int
    currency: str
    status: str  # a Status
    payment_id: str
    client_secret: str | None
    period_start: datetime | None  # None until paid for a first payment; set at creation for a renewal
    period_end: datetime | None
    attempt: int
    off_session: bool
    submitted_at: datetime | None
    kind: str  # a Kind
    plan_id: uuid.UUID | None  # the plan it pays for (None: rows older than plan changes)

    @property
    def first(self) -> bool:
        """A first payment (subscribe, trial end, a free plan's upgrade): no period until paid."""
        return self.kind == Kind.FIRST

    @property
    def idempotency_key(self) -> str:
        # A first payment keys on the subscription (round 1's contract); every later one on itself.
        return str(self.subscription_id) if self.first else str(self.id)


def lock(conn: db.Connection, invoice_id: uuid.UUID) -> Invoice | None:
    return db.one(conn, Invoice, QUERIES["lock_invoice"], {"invoice_id": invoice_id})


def pending(conn: db.Connection, subscription_id: uuid.UUID) -> Invoice | None:
    """The subscription's pending invoice, if any (there is at most one)."""
    return db.one(conn, Invoice, QUERIES["pending_invoice"], {"subscription_id": subscription_id})


def paid_upgrade(conn: db.Connection, subscription: Subscription, plan_id: uuid.UUID) -> Invoice | None:
    """The paid upgrade to `plan_id` in the subscription's current period, if any."""
    params = {
        "subscription_id": subscription.id,
        "plan_id": plan_id,
        "period_start": subscription.current_period_start,
    }
    found = conn.execute(QUERIES["paid_upgrade"], params).fetchone()
    return lock(conn, found[0]) if found else None


def find_by_payment(conn: db.Connection, payment_id: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(invoice id, subscription id) of the invoice a PSP payment is for; unlocked."""
    row = conn.execute(QUERIES["find_invoice_by_payment"], {"payment_id": payment_id}).fetchone()
    return (row[0], row[1]) if row else None


def new(
    conn: db.Connection,
    subscription: Subscription,
    period_start: datetime | None,
    *,
    off_session: bool,
    plan: model.Plan | None = None,
) -> Invoice | None:
    """A pending invoice at the price of `plan` (default: the subscription's): a first payment
    without `period_start`, else a renewal for the period from it.

    None when another sweep made this attempt first (the unique indexes refused a second one).
    """
    plan = plan or model.get_plan(conn, subscription.plan_id)
    if period_start is None:
        return _insert(conn, subscription, plan, plan.amount, Kind.FIRST, None, off_session)
    period = periods.starting(period_start, plan.interval)
    return _insert(conn, subscription, plan, plan.amount, Kind.RENEWAL, period, off_session)


def new_proration(
    conn: db.Connection, subscription: Subscription, plan: model.Plan, amount: int, *, off_session: bool
) -> Invoice:
    """A pending upgrade to `plan` for `amount`, the prorated rest of the current period. The caller
    holds the subscription's lock and saw no pending invoice."""
    assert subscription.current_period_start is not None and subscription.current_period_end is not None
    period = periods.Period(subscription.current_period_start, subscription.current_period_end)
    invoice = _insert(conn, subscription, plan, amount, Kind.PRORATION, period, off_session)
    assert invoice is not None, f"subscription {subscription.id} has a pending invoice"
    return invoice


def _insert(
    conn: db.Connection,
    subscription: Subscription,
    plan: model.Plan,
    amount: int,
    kind: Kind,
    period: periods.Period | None,
    off_session: bool,
) -> Invoice | None:
    invoice_id = uuid.uuid4()
    params = {
        "id": invoice_id,
        "subscription_id": subscription.id,
        "amount": amount,
        "currency": plan.currency,
        "payment_id": hyperswitch.merchant_id("pay", invoice_id),
        "period_start": period.start if period is not None else None,
        "period_end": period.end if period is not None else None,
        "off_session": off_session,
        "kind": kind,
        "plan_id": plan.id,
    }
    return db.one(conn, Invoice, QUERIES["insert_invoice"], params)


def view(subscription: Subscription, invoice: Invoice | None) -> dict[str, Any]:
    """What subscribe and complete-subscription print: the payment to make, while one is awaited."""
    out: dict[str, Any] = {"subscription_id": str(subscription.id), "status": subscription.status}
    if invoice is not None and subscription.status in model.AWAITING_PAYMENT:
        out.update(client_secret=invoice.client_secret, payment_id=invoice.payment_id)
    return out


# -- talking to the PSP about one invoice -----------------------------------------------------------


def send(
    conn: db.Connection, client: hyperswitch.Client, invoice_id: uuid.UUID, *, raise_errors: bool = False
) -> Invoice:
    """Create (or find again: same payment_id, HE_01 → GET) an invoice's PSP payment.

    Made holding the subscription's lock, after the invoice was committed: a crash mid-call leaves
    a pending, unsent invoice that the next sweep sends again, never a second payment. A definitive
    rejection fails the invoice; an ambiguous failure changes nothing. An off-session charge's
    synchronous answer is applied at once when final; a 3DS demand ends like a failure (the
    customer is not there to authenticate), after the payment is cancelled at the PSP.
    With `raise_errors` (the CLI) a rejection or an ambiguous failure then raises the DomainError
    saying so, carrying the subscription's view.
    """
    with conn.transaction():
        subscription, invoice = lock_pair(conn, invoice_id)
        if invoice.status != Status.PENDING or invoice.submitted_at is not None:
            return invoice
        if subscription.status in model.ENDED:  # nothing is ever sent for a subscription that is over
            log.info(
                "subscription %s is %s: invoice %s not sent", subscription.id, subscription.status, invoice.id
            )
            return invoice
        problem = _send_locked(conn, client, subscription, invoice)
        sent = lock(conn, invoice.id)
        after = model.lock(conn, subscription.id)
        assert sent is not None and after is not None
    if problem == _KEY_REFUSED:  # whoever sent it: every other create would be refused the same
        raise errors.PaymentProviderMisconfigured(hyperswitch.UNAVAILABLE, view(after, sent))
    if problem is None or not raise_errors:
        return sent
    if problem == "ambiguous":
        raise errors.PaymentProviderUnavailable(hyperswitch.UNAVAILABLE, view(after, sent))
    raise errors.PaymentRejected(f"payment rejected by payment provider: {problem}", view(after, None))


_KEY_REFUSED = "key refused"


def lock_pair(conn: db.Connection, invoice_id: uuid.UUID) -> tuple[Subscription, Invoice]:
    """An invoice and its subscription, locked in the order every writer takes: subscription first."""
    found = conn.execute(QUERIES["subscription_of_invoice"], {"invoice_id": invoice_id}).fetchone()
    assert found is not None, f"invoice {invoice_id} not found"
    subscription = model.lock(conn, found[0])
    invoice = lock(conn, invoice_id)
    assert subscription is not None and invoice is not None
    return subscription, invoice


def _send_locked(
    conn: db.Connection, client: hyperswitch.Client, subscription: Subscription, invoice: Invoice
) -> str | None:
    """None when the PSP took it; "ambiguous"; _KEY_REFUSED (401/403: left as ambiguous); or the
    rejection's message."""
    try:
        payment = _create_payment(client, subscription, invoice)
    except errors.HyperswitchUnauthorized as exc:
        hyperswitch.key_refused(f"subscription {subscription.id}: payment {invoice.payment_id}", exc)
        return _KEY_REFUSED
    except errors.HyperswitchUnavailable as exc:
        log.warning(
            "subscription %s: payment %s create was ambiguous: %s", subscription.id, invoice.payment_id, exc
        )
        return "ambiguous"
    except errors.HyperswitchRejected as exc:
        reason = exc.message or exc.code
        log.warning("subscription %s: payment %s rejected: %s", subscription.id, invoice.payment_id, reason)
        settle(conn, subscription, invoice, {"status": "failed", "error_message": reason})
        return reason
    client_secret = payment.get("client_secret")
    secret = client_secret if isinstance(client_secret, str) else None
    conn.execute(QUERIES["mark_sent"], {"invoice_id": invoice.id, "client_secret": secret})
    if invoice.off_session:
        _apply_off_session_answer(conn, client, subscription, invoice, payment)
    return None


def _create_payment(
    client: hyperswitch.Client, subscription: Subscription, invoice: Invoice
) -> dict[str, Any]:
    """First payments, recoveries and on-session renewals save the method for the next renewals."""
    if invoice.off_session and subscription.payment_method_id is None:
        raise errors.HyperswitchRejected(400, "invalid_request", "IR_16", "no saved payment method to charge")
    return client.create_payment(
        payment_id=invoice.payment_id,
        amount=invoice.amount,
        currency=invoice.currency,
        idempotency_key=invoice.idempotency_key,
        metadata={"subscription_id": str(subscription.id), "invoice_id": str(invoice.id)},
        description=f"Subscription {subscription.id}",
        customer_id=subscription.customer_id,
        save_for_off_session=not invoice.off_session,
        off_session_payment_method=subscription.payment_method_id if invoice.off_session else None,
    )


def _apply_off_session_answer(
    conn: db.Connection,
    client: hyperswitch.Client,
    subscription: Subscription,
    invoice: Invoice,
    payment: Mapping[str, Any],
) -> None:
    status = payment.get("status")
    if isinstance(status, str) and status in FINAL_PAYMENT_STATUSES:
        settle(conn, subscription, invoice, payment)
    elif status == "requires_customer_action":
        log.info("subscription %s: renewal %s needs 3DS, off-session: a failure", subscription.id, invoice.id)
        abandon(conn, client, subscription, invoice, _NEEDS_3DS)


def abandon(
    conn: db.Connection, client: hyperswitch.Client, subscription: Subscription, invoice: Invoice, reason: str
) -> str | None:
    """Cancel a pending invoice's PSP payment and settle the invoice with what the PSP then holds.

    The caller holds both locks. A payment that turns out final (the cancel is refused) is applied
    as it is: paid money is not lost, a succeeded payment nobody wants is refunded. None when the
    PSP could not be reached: the invoice stays pending for the reconciler.
    """
    try:
        payment = client.cancel_or_read(invoice.payment_id, reason)
    except errors.HyperswitchNotFound:
        if invoice.submitted_at is not None:  # the PSP answered its create: it is our config that is off
            log.error(
                "subscription %s: payment %s is unknown to the PSP after its create",
                subscription.id,
                invoice.payment_id,
            )
            return None
        payment = {"payment_id": invoice.payment_id, "status": "cancelled"}  # never reached it
    except errors.HyperswitchError as exc:
        log.warning(
            "subscription %s: cancelling payment %s failed: %s", subscription.id, invoice.payment_id, exc
        )
        return None
    if payment.get("status") not in FINAL_PAYMENT_STATUSES:
        return None
    return settle(conn, subscription, invoice, payment)


# -- a payment's final word: webhook, reconciler or synchronous answer ------------------------------


def apply_payment(
    conn: db.Connection, subscription_id: uuid.UUID, invoice_id: uuid.UUID, event: events.Event
) -> str:
    """A final payment event (payment_succeeded, _captured, _failed, _cancelled) for an invoice."""
    subscription = model.lock(conn, subscription_id)
    invoice = lock(conn, invoice_id)
    assert subscription is not None and invoice is not None
    return settle(conn, subscription, invoice, event.data, event.event_type)


def settle(
    conn: db.Connection,
    subscription: Subscription,
    invoice: Invoice,
    payment: Mapping[str, Any],
    event_type: str | None = None,
) -> str:
    """Apply a final payment to a locked subscription and invoice: the object's status and
    captured amount decide. Money nobody owes us (a failed invoice, a subscription that is over,
    a period already paid, a partial capture) is refunded in full automatically."""
    outcome = events.payment_outcome(event_type, payment)
    if invoice.status != Status.PENDING:
        if outcome.kind != "failed" and invoice.status == Status.FAILED:
            return _refund_unwanted(conn, invoice, outcome.captured, "a failed invoice")
        return f"skipped: invoice already {invoice.status}"
    if outcome.kind == "failed":
        _fail(conn, subscription, invoice)
        return "ok"
    if outcome.kind == "partial":
        _fail(conn, subscription, invoice)
        if outcome.captured > 0:
            _refund_unwanted(conn, invoice, outcome.captured, "a partial capture")
        return "ok"
    if not events.paid_in_full(payment, invoice.amount, invoice.currency, f"invoice {invoice.id}"):
        return "error: amount mismatch"
    conn.execute(QUERIES["pay_invoice"], {"invoice_id": invoice.id})
    ledger.post(conn, ledger.invoice_paid(invoice.id, invoice.currency, invoice.amount))
    if subscription.status in model.ENDED:
        what = f"a {subscription.status} subscription"
        return _refund_unwanted(conn, invoice, outcome.captured, what, ledger.REVENUE)
    if invoice.kind == Kind.PRORATION:
        if invoice.period_end is not None and invoice.period_end <= datetime.now(UTC):
            # Paid once its period was over: it bought nothing, and the renewal bills the plan in force.
            what = "an upgrade paid after its period ended"
            return _refund_unwanted(conn, invoice, outcome.captured, what, ledger.REVENUE)
        _upgrade(conn, subscription, invoice, payment)
        return "ok"
    if _already_paid_for(subscription, invoice):
        return _refund_unwanted(conn, invoice, outcome.captured, "a period already paid", ledger.REVENUE)
    _activate(conn, subscription, invoice, payment)
    return "ok"


def _already_paid_for(subscription: Subscription, invoice: Invoice) -> bool:
    """A renewal for a period the subscription already runs past (paid by another attempt)."""
    if invoice.kind != Kind.RENEWAL or subscription.status != model.Status.ACTIVE:
        return False
    return periods.covers(subscription.current_period_end, invoice.period_end)


def _upgrade(
    conn: db.Connection, subscription: Subscription, invoice: Invoice, payment: Mapping[str, Any]
) -> None:
    """An upgrade is paid: its plan is in force from now on, in the same period."""
    params = {
        "subscription_id": subscription.id,
        "plan_id": invoice.plan_id,
        "payment_method_id": _method(payment),
    }
    conn.execute(QUERIES["pay_upgrade"], params)
    log.info(
        "subscription %s upgraded to plan %s: invoice %s paid", subscription.id, invoice.plan_id, invoice.id
    )


def _method(payment: Mapping[str, Any]) -> str | None:
    method = payment.get("payment_method_id")
    return method if isinstance(method, str) and method else None


def _activate(
    conn: db.Connection, subscription: Subscription, invoice: Invoice, payment: Mapping[str, Any]
) -> None:
    plan = model.get_plan(conn, invoice.plan_id or subscription.plan_id)
    period = _period_paid(plan, invoice)
    params = {
        "subscription_id": subscription.id,
        "invoice_id": invoice.id,
        "plan_id": plan.id,
        "payment_method_id": _method(payment),
        "period_start": period.start,
        "period_end": period.end,
    }
    conn.execute(QUERIES["activate_first" if invoice.first else "activate_period"], params)
    log.info(
        "subscription %s active: invoice %s paid (attempt %d)", subscription.id, invoice.id, invoice.attempt
    )


def _period_paid(plan: model.Plan, invoice: Invoice) -> periods.Period:
    """A renewal pays for the period it was created for; a first payment's, on its plan, starts now."""
    if invoice.period_start is not None and invoice.period_end is not None:
        return periods.Period(invoice.period_start, invoice.period_end)
    return periods.starting(datetime.now(UTC), plan.interval)


def _fail(conn: db.Connection, subscription: Subscription, invoice: Invoice) -> None:
    """A first payment that fails expires the subscription; a renewal's makes it past_due (dunning);
    a failed upgrade (or a free plan's) leaves the subscription as it is, on its plan."""
    conn.execute(QUERIES["fail_invoice"], {"invoice_id": invoice.id})
    if subscription.status == model.Status.PENDING_PAYMENT:
        model.set_status(conn, subscription.id, model.Status.EXPIRED)
        log.info("subscription %s expired: first payment %s failed", subscription.id, invoice.payment_id)
    elif subscription.status in (model.Status.ACTIVE, model.Status.PAST_DUE) and invoice.kind == Kind.RENEWAL:
        model.set_past_due(conn, subscription.id)
        log.info(
            "subscription %s past_due: renewal %s attempt %d failed",
            subscription.id,
            invoice.payment_id,
            invoice.attempt,
        )


def _refund_unwanted(
    conn: db.Connection, invoice: Invoice, amount: int, what: str, source: str = ledger.WORLD
) -> str:
    """No money kept for nothing: the whole captured amount goes back, automatically, once."""
    opened = automatic_refunds.open_refund(
        conn,
        source=source,
        invoice_id=invoice.id,
        amount=amount,
        currency=invoice.currency,
        note="automatic: payment for a failed or ended subscription",
    )
    if not opened:
        return "skipped: invoice already refunded"
    log.warning(
        "invoice %s: payment %s succeeded for %s: refunding %d %s automatically",
        invoice.id,
        invoice.payment_id,
        what,
        amount,
        invoice.currency,
    )
    return "ok"


def handle_action_required(conn: db.Connection, event: events.Event, settings: Any) -> str:
    """action_required: on an off-session renewal the bank wants 3DS from a customer who is not
    there: like a `requires_customer_action` answer, the payment is cancelled at the PSP and the
    attempt fails (dunning goes on). Anywhere else the customer can act: informational."""
    payment_id = events.object_id(event.data, "payment_id")
    found = find_by_payment(conn, payment_id) if payment_id else None
    if found is None:
        return "skipped: informational"
    subscription, invoice = lock_pair(conn, found[0])
    if not invoice.off_session or invoice.status != Status.PENDING:
        return "skipped: informational"
    client = hyperswitch.from_settings(settings)  # handlers get none; a 3DS demand off-session is rare
    try:
        result = None if client is None else abandon(conn, client, subscription, invoice, _NEEDS_3DS)
    finally:
        if client is not None:
            client.close()
    return result or "skipped: payment provider unavailable, left to the reconciler"


_NEEDS_3DS = "authentication required off-session"


def store_client_secret(conn: db.Connection, invoice: Invoice, client_secret: str) -> None:
    conn.execute(QUERIES["store_client_secret"], {"invoice_id": invoice.id, "client_secret": client_secret})


def forget_payment_method(conn: db.Connection, event: events.Event, settings: Any) -> str:
    """mandate_revoked: the saved method can no longer be charged; renewals go on-session."""
    method = events.object_id(event.data, "payment_method_id")
    if method is None:
        return "error: missing payment_method_id"
    if event.event_type == "mandate_revoked" or event.data.get("status") == "revoked":
        cleared = conn.execute(QUERIES["forget_payment_method"], {"payment_method_id": method}).fetchall()
        if not cleared:
            return "skipped: unknown payment method"
        log.info("payment method %s revoked: forgotten by %d subscriptions", method, len(cleared))
        return "ok"
    return f"skipped: mandate {event.data.get('status')}"
