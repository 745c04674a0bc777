"""The subscription state machine: subscribe, pay, fail, recover, cancel, and the feature gate.

    subscribe ─┬─ free plan ──────────────────────────────────────────────▶ active (no period)
               ├─ paid plan, first trial ──▶ trialing ──(trial end)──┐
               └─ paid plan ──────────────────────────────────────────┴──▶ pending_payment
    pending_payment ─(paid)─▶ active ─(period end, renewal)─▶ active ─(renewal failed)─▶ past_due
    pending_payment ─(failed)─▶ expired          past_due ─(paid, any dunning step)─▶ active
    past_due ─(dunning exhausted)─▶ expired      active|trialing ─(cancel)─▶ canceled

Each PSP payment is one invoice; a subscription has at most one pending invoice. Every writer
locks the subscription first, then its invoice; a PSP call about an invoice is made holding the
subscription's lock, so a webhook, a sweep and a cancel about it take turns. The billing sweeps
that move subscriptions over time (trial end, renewal, dunning) are in billing.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from psycopg.rows import class_row

from veza_worker import db, errors, events, hyperswitch, refunds

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

Row = TypeVar("Row")
NOT_CONFIGURED = "payment provider not configured — paid plans temporarily unavailable"
LIVE = ("active", "trialing", "pending_payment", "past_due")
# Hyperswitch IntentStatus values that end a payment (src: IntentStatus::is_in_terminal_state).
FINAL_PAYMENT_STATUSES = frozenset(
    {"succeeded", "failed", "cancelled", "cancelled_post_capture", "expired", "partially_captured"}
)


@dataclass(frozen=True)
class Plan:
    id: uuid.UUID
    name: str
    amount: int
    currency: str
    interval: str
    trial_days: int


@dataclass(frozen=True)
class Subscription:
    id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID
    status: str
    trial_ends_at: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    payment_method_id: str | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    past_due_since: datetime | None
    dunning_step: int

    @property
    def customer_id(self) -> str:
        return hyperswitch.merchant_id("cus", self.user_id)


@dataclass(frozen=True)
class Invoice:
    id: uuid.UUID
    subscription_id: uuid.UUID
    amount: int
    currency: str
    status: str
    payment_id: str
    client_secret: str | None
    period_start: datetime | None  # None until paid for a first payment; set at creation for a renewal
    period_end: datetime | None
    attempt: int
    off_session: bool
    submitted_at: datetime | None

    @property
    def first(self) -> bool:
        """A subscription's first payment (subscribe, trial end): it has no period until paid."""
        return self.period_start is None

    @property
    def idempotency_key(self) -> str:
        # A first payment keys on the subscription (round 1's contract); every later one on itself.
        return str(self.subscription_id) if self.first else str(self.id)


def _one(conn: db.Connection, kind: type[Row], query: str, **params: Any) -> Row | None:
    with conn.cursor(row_factory=class_row(kind)) as cur:
        return cur.execute(QUERIES[query], params).fetchone()


def lock(conn: db.Connection, subscription_id: uuid.UUID) -> Subscription | None:
    return _one(conn, Subscription, "lock_subscription", subscription_id=subscription_id)


def lock_invoice(conn: db.Connection, invoice_id: uuid.UUID) -> Invoice | None:
    return _one(conn, Invoice, "lock_invoice", invoice_id=invoice_id)


def pending_invoice(conn: db.Connection, subscription_id: uuid.UUID) -> Invoice | None:
    return _one(conn, Invoice, "pending_invoice", subscription_id=subscription_id)


def get_plan(conn: db.Connection, plan_id: uuid.UUID) -> Plan:
    plan = _one(conn, Plan, "get_plan", plan_id=plan_id)
    assert plan is not None  # user_subscriptions.plan_id references it
    return plan


def find_invoice_by_payment(conn: db.Connection, payment_id: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(invoice id, subscription id) of the invoice a PSP payment is for."""
    row = conn.execute(QUERIES["find_invoice_by_payment"], {"payment_id": payment_id}).fetchone()
    return (row[0], row[1]) if row else None


def _locked(conn: db.Connection, subscription_id: uuid.UUID) -> Subscription:
    subscription = lock(conn, subscription_id)
    if subscription is None:
        raise errors.NotFound(f"subscription {subscription_id} not found")
    return subscription


def _require(client: hyperswitch.Client | None) -> hyperswitch.Client:
    if client is None:
        raise errors.PaymentProviderNotConfigured(NOT_CONFIGURED)
    return client


# -- subscribe and complete-subscription ------------------------------------------------------------


def subscribe(
    conn: db.Connection, client: hyperswitch.Client | None, user_id: uuid.UUID, plan_id: uuid.UUID
) -> dict[str, Any]:
    """`{subscription_id, status, client_secret?, payment_id?}`; a pending one to the same plan comes back."""
    with conn.transaction():
        conn.execute(QUERIES["lock_user"], {"user_id": user_id})
        plan = _one(conn, Plan, "get_plan", plan_id=plan_id)
        if plan is None:
            raise errors.NotFound(f"plan {plan_id} not found")
        live = _one(conn, Subscription, "lock_live_subscription", user_id=user_id)
        if live is None:
            subscription, invoice = _create(conn, client, user_id, plan)
        else:
            subscription, invoice = live, _awaiting_payment(conn, live, plan)
    if invoice is not None and invoice.submitted_at is None:
        invoice = send(conn, _require(client), invoice.id, raise_errors=True)
    return view(subscription, invoice)


def complete(
    conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID
) -> dict[str, Any]:
    """A payable on-session attempt: the pending first payment, or for a past_due subscription the
    pending recovery attempt, created for the open period when none is pending."""
    with conn.transaction():
        subscription = _locked(conn, subscription_id)
        if subscription.status not in ("pending_payment", "past_due"):
            raise errors.DomainError(
                f"subscription {subscription_id} is {subscription.status}, not pending_payment or past_due"
            )
        invoice = pending_invoice(conn, subscription.id)
        if invoice is None and subscription.status == "past_due":
            _require(client)  # before anything is written
            invoice = new_invoice(conn, subscription, subscription.current_period_end, off_session=False)
        if invoice is None:  # a pending_payment subscription always has one; say so loudly if not
            raise errors.DomainError(f"subscription {subscription_id} has no pending invoice")
        if invoice.off_session:
            raise errors.DomainError(
                f"renewal payment in progress: payment {invoice.payment_id} of subscription {subscription_id}"
            )
    if invoice.submitted_at is None:  # new, or the first create was ambiguous: same payment_id again
        invoice = send(conn, _require(client), invoice.id, raise_errors=True)
    return view(subscription, invoice)


def _create(
    conn: db.Connection, client: hyperswitch.Client | None, user_id: uuid.UUID, plan: Plan
) -> tuple[Subscription, Invoice | None]:
    if plan.amount == 0:
        return _insert(conn, user_id, plan, "active"), None
    ever_trialed = conn.execute(QUERIES["ever_trialed"], {"user_id": user_id}).fetchone()
    if plan.trial_days > 0 and not (ever_trialed and ever_trialed[0]):
        return _insert(conn, user_id, plan, "trialing"), None
    _require(client)  # before anything is written
    subscription = _insert(conn, user_id, plan, "pending_payment")
    return subscription, new_invoice(conn, subscription, None, off_session=False)


def _insert(conn: db.Connection, user_id: uuid.UUID, plan: Plan, status: str) -> Subscription:
    subscription_id = uuid.uuid4()
    trial_days = plan.trial_days if status == "trialing" else 0
    params = {"id": subscription_id, "user_id": user_id, "plan_id": plan.id, "status": status}
    conn.execute(QUERIES["insert_subscription"], {**params, "trial_days": trial_days})
    log.info("subscription %s created for user %s on plan %s: %s", subscription_id, user_id, plan.id, status)
    return _locked(conn, subscription_id)


def new_invoice(
    conn: db.Connection, subscription: Subscription, period_start: datetime | None, *, off_session: bool
) -> Invoice | None:
    """A pending invoice at the plan's price; for a renewal, for the period from `period_start`.

    None when another sweep made this attempt first (the unique indexes refused a second one).
    """
    plan = get_plan(conn, subscription.plan_id)
    invoice_id = uuid.uuid4()
    params = {
        "id": invoice_id,
        "subscription_id": subscription.id,
        "amount": plan.amount,
        "currency": plan.currency,
        "payment_id": hyperswitch.merchant_id("pay", invoice_id),
        "period_start": period_start,
        "off_session": off_session,
    }
    with conn.cursor(row_factory=class_row(Invoice)) as cur:
        return cur.execute(QUERIES["insert_invoice"], params).fetchone()


def _awaiting_payment(conn: db.Connection, live: Subscription, plan: Plan) -> Invoice:
    if live.status != "pending_payment":
        raise errors.DomainError(
            f"user {live.user_id} already has subscription {live.id}, which is {live.status}"
        )
    if live.plan_id != plan.id:
        raise errors.DomainError(
            f"user {live.user_id} has subscription {live.id} awaiting payment for another plan:"
            " complete it or let it expire"
        )
    invoice = pending_invoice(conn, live.id)
    if invoice is None:
        raise errors.DomainError(f"subscription {live.id} has no pending invoice")
    return invoice


def view(subscription: Subscription, invoice: Invoice | None) -> dict[str, Any]:
    out: dict[str, Any] = {"subscription_id": str(subscription.id), "status": subscription.status}
    if invoice is not None and subscription.status in ("pending_payment", "past_due"):
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
        subscription, invoice = _lock_pair(conn, invoice_id)
        if invoice.status != "pending" or invoice.submitted_at is not None:
            return invoice
        problem = _send_locked(conn, client, subscription, invoice)
        sent = lock_invoice(conn, invoice.id)
        after = lock(conn, subscription.id)
        assert sent is not None and after is not None
    if problem is None or not raise_errors:
        return sent
    if problem == "ambiguous":
        message = "payment provider unavailable, will be reconciled"
        raise errors.PaymentProviderUnavailable(message, view(after, sent))
    raise errors.PaymentRejected(f"payment rejected by payment provider: {problem}", view(after, None))


def _lock_pair(conn: db.Connection, invoice_id: uuid.UUID) -> tuple[Subscription, Invoice]:
    """An invoice and its subscription, locked in the order every writer takes: subscription first."""
    found = conn.execute(QUERIES["subscription_of_invoice"], {"invoice_id": invoice_id}).fetchone()
    assert found is not None, f"invoice {invoice_id} not found"
    subscription = lock(conn, found[0])
    invoice = lock_invoice(conn, invoice_id)
    assert subscription is not None and invoice is not None
    return subscription, invoice


def _send_locked(
    conn: db.Connection, client: hyperswitch.Client, subscription: Subscription, invoice: Invoice
) -> str | None:
    """None when the PSP took it; "ambiguous"; or the rejection's message."""
    try:
        payment = _create_payment(client, subscription, invoice)
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
        abandon(conn, client, subscription, invoice, "authentication required off-session")


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
    subscription = lock(conn, subscription_id)
    invoice = lock_invoice(conn, invoice_id)
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
    if invoice.status != "pending":
        if outcome.kind != "failed" and invoice.status == "failed":
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
    if subscription.status in ("expired", "canceled"):
        return _refund_unwanted(conn, invoice, outcome.captured, f"a {subscription.status} subscription")
    if _already_paid_for(subscription, invoice):
        return _refund_unwanted(conn, invoice, outcome.captured, "a period already paid")
    _activate(conn, subscription, invoice, payment)
    return "ok"


def _already_paid_for(subscription: Subscription, invoice: Invoice) -> bool:
    """A renewal for a period the subscription already runs past (paid by another attempt)."""
    if invoice.first or subscription.status != "active" or invoice.period_end is None:
        return False
    return (
        subscription.current_period_end is not None and invoice.period_end <= subscription.current_period_end
    )


def _activate(
    conn: db.Connection, subscription: Subscription, invoice: Invoice, payment: Mapping[str, Any]
) -> None:
    method = payment.get("payment_method_id")
    params = {
        "subscription_id": subscription.id,
        "invoice_id": invoice.id,
        "payment_method_id": method if isinstance(method, str) and method else None,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
    }
    conn.execute(QUERIES["activate_first" if invoice.first else "activate_period"], params)
    log.info(
        "subscription %s active: invoice %s paid (attempt %d)", subscription.id, invoice.id, invoice.attempt
    )


def _fail(conn: db.Connection, subscription: Subscription, invoice: Invoice) -> None:
    """A first payment that fails expires the subscription; a renewal's makes it past_due (dunning)."""
    conn.execute(QUERIES["fail_invoice"], {"invoice_id": invoice.id})
    if subscription.status == "pending_payment":
        _set_status(conn, subscription.id, "expired")
        log.info("subscription %s expired: first payment %s failed", subscription.id, invoice.payment_id)
    elif subscription.status in ("active", "past_due") and not invoice.first:
        conn.execute(QUERIES["set_past_due"], {"subscription_id": subscription.id})
        log.info(
            "subscription %s past_due: renewal %s attempt %d failed",
            subscription.id,
            invoice.payment_id,
            invoice.attempt,
        )


def _refund_unwanted(conn: db.Connection, invoice: Invoice, amount: int, what: str) -> str:
    """No money kept for nothing: the whole captured amount goes back, automatically, once."""
    opened = refunds.open_automatic(
        conn,
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


def _set_status(conn: db.Connection, subscription_id: uuid.UUID, status: str) -> None:
    conn.execute(QUERIES["set_status"], {"subscription_id": subscription_id, "status": status})


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


# -- cancel and resume ------------------------------------------------------------------------------


def cancel(
    conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID, *, now: bool
) -> dict[str, Any]:
    """At period end (the default for active/trialing) or at once; a pending invoice's payment is
    cancelled at the PSP and the invoice failed."""
    with conn.transaction():
        subscription = _locked(conn, subscription_id)
        if subscription.status in ("expired", "canceled"):
            raise errors.DomainError(f"subscription {subscription_id} is already {subscription.status}")
        ends = _access_ends(subscription)
        if not now and ends is not None and ends > datetime.now(UTC) and subscription.status != "past_due":
            conn.execute(
                QUERIES["set_cancel_at_period_end"], {"subscription_id": subscription.id, "cancel": True}
            )
            log.info("subscription %s cancels at %s", subscription.id, ends.isoformat())
        else:
            cancel_now(conn, client, subscription)
        return cancel_view(_locked(conn, subscription_id))


def cancel_now(conn: db.Connection, client: hyperswitch.Client | None, subscription: Subscription) -> None:
    """Cancel a locked subscription at once; its pending invoice's PSP payment is cancelled too."""
    conn.execute(QUERIES["cancel_now"], {"subscription_id": subscription.id})
    log.info("subscription %s canceled (was %s)", subscription.id, subscription.status)
    invoice = pending_invoice(conn, subscription.id)
    if invoice is None:
        return
    canceled = replace(subscription, status="canceled")
    if client is None or abandon(conn, client, canceled, invoice, "subscription canceled") is None:
        log.warning(
            "subscription %s canceled with payment %s still pending at the PSP: the reconciler cancels it",
            subscription.id,
            invoice.payment_id,
        )


def resume(conn: db.Connection, subscription_id: uuid.UUID) -> dict[str, Any]:
    """Undo a cancel at period end, while the subscription is still active or trialing."""
    with conn.transaction():
        subscription = _locked(conn, subscription_id)
        if subscription.status not in ("active", "trialing"):
            raise errors.DomainError(
                f"subscription {subscription_id} is {subscription.status}: only active or trialing can resume"
            )
        if subscription.cancel_at_period_end:
            conn.execute(
                QUERIES["set_cancel_at_period_end"], {"subscription_id": subscription.id, "cancel": False}
            )
            log.info("subscription %s resumed", subscription.id)
        return cancel_view(_locked(conn, subscription_id))


def _access_ends(subscription: Subscription) -> datetime | None:
    if subscription.status == "trialing":
        return subscription.trial_ends_at
    if subscription.status == "active":
        return subscription.current_period_end
    return None


def cancel_view(subscription: Subscription) -> dict[str, Any]:
    return {
        "subscription_id": str(subscription.id),
        "status": subscription.status,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "cancel_at": _access_ends(subscription) if subscription.cancel_at_period_end else None,
        "canceled_at": subscription.canceled_at,
    }


# -- the feature gate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateRow:
    id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID
    status: str
    trial_ends_at: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    free: bool
    has_paid_invoice: bool


_DENIED = {
    "pending_payment": "complete payment",
    "past_due": "renewal payment failed: complete payment",
    "expired": "subscription expired",
    "canceled": "subscription canceled",
}


def status(conn: db.Connection, user_id: uuid.UUID, grace: timedelta = timedelta(days=3)) -> dict[str, Any]:
    """Defence in depth: the status, and the dates, and the payment, must all agree.

    trialing grants only before trial_ends_at; a paid plan's active grants only with a paid invoice
    and before current_period_end + grace; a free plan's active always. A stalled clock (no sweep
    moving rows) therefore gives a paid plan away for at most the grace.
    """
    with conn.transaction():
        gate = _one(conn, GateRow, "latest_subscription", user_id=user_id)
    if gate is None:
        return {"user_id": str(user_id), "allowed": False, "reason": "no subscription", "status": None}
    reason = _denial(gate, datetime.now(UTC), grace)
    out: dict[str, Any] = {
        "user_id": str(user_id),
        "allowed": reason is None,
        "status": gate.status,
        "subscription_id": str(gate.id),
        "plan_id": str(gate.plan_id),
    }
    if gate.status == "trialing":
        out["trial_ends_at"] = gate.trial_ends_at
    elif gate.status == "active":
        out["current_period_end"] = gate.current_period_end
    if gate.cancel_at_period_end:
        out["cancel_at_period_end"] = True
    if reason is not None:
        out["reason"] = reason
    return out


def _denial(gate: GateRow, now: datetime, grace: timedelta) -> str | None:
    """Why the gate refuses, or None when it grants."""
    if gate.status == "trialing":
        return None if gate.trial_ends_at and gate.trial_ends_at > now else "trial ended"
    if gate.status != "active":
        return _DENIED[gate.status]
    if gate.free:
        return None
    if not gate.has_paid_invoice:
        return "no paid invoice"
    if gate.current_period_end is None or gate.current_period_end + grace <= now:
        return "renewal payment pending"
    return None
