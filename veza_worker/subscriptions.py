"""Subscriptions: subscribe, the payment webhook, recovery, the feature gate and trial end.

free plan → active. Paid plan with a trial, user never trialed → trialing (no PSP call). Otherwise
→ pending_payment + a pending invoice + a PSP payment. payment_succeeded → invoice paid,
subscription active for one interval; payment_failed / payment_cancelled → invoice failed,
subscription expired. Trial end → pending_payment + invoice + payment. Only active and trialing
grant features: a paid plan is never active without a confirmed payment.

Every writer locks the subscription first, then its invoice.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from psycopg.rows import class_row

from veza_worker import db, errors, events, hyperswitch

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

Row = TypeVar("Row")
NOT_CONFIGURED = "payment provider not configured — paid plans temporarily unavailable"
TRIAL_END_BATCH = 50


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
    current_period_end: datetime | None


@dataclass(frozen=True)
class Invoice:
    id: uuid.UUID
    subscription_id: uuid.UUID
    amount: int
    currency: str
    status: str
    payment_id: str
    client_secret: str | None


def _one(conn: db.Connection, kind: type[Row], query: str, **params: Any) -> Row | None:
    with conn.cursor(row_factory=class_row(kind)) as cur:
        return cur.execute(QUERIES[query], params).fetchone()


def lock(conn: db.Connection, subscription_id: uuid.UUID) -> Subscription | None:
    return _one(conn, Subscription, "lock_subscription", subscription_id=subscription_id)


def lock_invoice(conn: db.Connection, invoice_id: uuid.UUID) -> Invoice | None:
    return _one(conn, Invoice, "lock_invoice", invoice_id=invoice_id)


def pending_invoice(conn: db.Connection, subscription_id: uuid.UUID) -> Invoice | None:
    return _one(conn, Invoice, "pending_invoice", subscription_id=subscription_id)


def find_invoice_by_payment(conn: db.Connection, payment_id: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(invoice id, subscription id) of the invoice a PSP payment is for."""
    row = conn.execute(QUERIES["find_invoice_by_payment"], {"payment_id": payment_id}).fetchone()
    return (row[0], row[1]) if row else None


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
    if invoice is not None and invoice.client_secret is None:
        invoice = charge(conn, _require(client), subscription, invoice)
    return view(subscription, invoice)


def complete(
    conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID
) -> dict[str, Any]:
    """The client_secret of a pending_payment subscription, to finish a stalled payment flow."""
    with conn.transaction():
        subscription = lock(conn, subscription_id)
        if subscription is None:
            raise errors.NotFound(f"subscription {subscription_id} not found")
        if subscription.status != "pending_payment":
            raise errors.DomainError(
                f"subscription {subscription_id} is {subscription.status}, not pending_payment"
            )
        invoice = _invoice_for(conn, subscription)
    if invoice.client_secret is None:  # the first create was ambiguous: send it again, same payment_id
        invoice = charge(conn, _require(client), subscription, invoice)
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
    return subscription, new_invoice(conn, subscription, plan)


def _insert(conn: db.Connection, user_id: uuid.UUID, plan: Plan, status: str) -> Subscription:
    subscription_id = uuid.uuid4()
    trial_days = plan.trial_days if status == "trialing" else 0
    params = {"id": subscription_id, "user_id": user_id, "plan_id": plan.id, "status": status}
    conn.execute(QUERIES["insert_subscription"], {**params, "trial_days": trial_days})
    log.info("subscription %s created for user %s on plan %s: %s", subscription_id, user_id, plan.id, status)
    created = lock(conn, subscription_id)
    assert created is not None
    return created


def new_invoice(conn: db.Connection, subscription: Subscription, plan: Plan) -> Invoice:
    invoice_id = uuid.uuid4()
    payment_id = hyperswitch.merchant_id("pay", invoice_id)
    params = {"id": invoice_id, "subscription_id": subscription.id, "payment_id": payment_id}
    conn.execute(QUERIES["insert_invoice"], {**params, "amount": plan.amount, "currency": plan.currency})
    return Invoice(invoice_id, subscription.id, plan.amount, plan.currency, "pending", payment_id, None)


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
    return _invoice_for(conn, live)


def _invoice_for(conn: db.Connection, subscription: Subscription) -> Invoice:
    invoice = pending_invoice(conn, subscription.id)
    if invoice is None:  # a pending_payment subscription always has one; say so loudly if not
        raise errors.DomainError(f"subscription {subscription.id} has no pending invoice")
    return invoice


def _require(client: hyperswitch.Client | None) -> hyperswitch.Client:
    if client is None:
        raise errors.PaymentProviderNotConfigured(NOT_CONFIGURED)
    return client


def charge(
    conn: db.Connection, client: hyperswitch.Client, subscription: Subscription, invoice: Invoice
) -> Invoice:
    """Create (or find again) the invoice's PSP payment and store its client_secret.

    Idempotency-Key is the subscription id: an invoice is a subscription's first (renewals, not
    built, would key on the invoice id). A rejection fails the invoice and expires the subscription.
    """
    try:
        payment = client.create_payment(
            payment_id=invoice.payment_id,
            amount=invoice.amount,
            currency=invoice.currency,
            idempotency_key=str(subscription.id),
            metadata={"subscription_id": str(subscription.id), "invoice_id": str(invoice.id)},
            description=f"Subscription {subscription.id}",
        )
    except errors.HyperswitchUnavailable as exc:
        log.warning(
            "subscription %s: payment %s create was ambiguous: %s", subscription.id, invoice.payment_id, exc
        )
        message = "payment provider unavailable, will be reconciled"
        raise errors.PaymentProviderUnavailable(message, view(subscription, invoice)) from exc
    except errors.HyperswitchRejected as exc:
        expired = _settle_rejected(conn, subscription, invoice, exc.message or exc.code)
        message = f"payment rejected by payment provider: {exc.message or exc.code}"
        raise errors.PaymentRejected(message, view(expired, None)) from exc
    return store_client_secret(conn, invoice, payment.get("client_secret"))


def store_client_secret(conn: db.Connection, invoice: Invoice, client_secret: Any) -> Invoice:
    if not isinstance(client_secret, str):
        return invoice
    with conn.transaction():
        conn.execute(
            QUERIES["store_client_secret"], {"invoice_id": invoice.id, "client_secret": client_secret}
        )
    return replace(invoice, client_secret=client_secret)


def _settle_rejected(
    conn: db.Connection, subscription: Subscription, invoice: Invoice, message: str
) -> Subscription:
    log.warning("subscription %s: payment %s rejected: %s", subscription.id, invoice.payment_id, message)
    with conn.transaction():
        locked = lock(conn, subscription.id)
        pending = lock_invoice(conn, invoice.id)
        assert locked is not None and pending is not None
        if pending.status == "pending":
            _fail(conn, locked, pending)
    return replace(subscription, status="expired")


def view(subscription: Subscription, invoice: Invoice | None) -> dict[str, Any]:
    out: dict[str, Any] = {"subscription_id": str(subscription.id), "status": subscription.status}
    if invoice is not None and subscription.status == "pending_payment":
        out.update(client_secret=invoice.client_secret, payment_id=invoice.payment_id)
    return out


# -- the payment webhook ----------------------------------------------------------------------------


def apply_payment(
    conn: db.Connection, subscription_id: uuid.UUID, invoice_id: uuid.UUID, event: events.Event
) -> str:
    """payment_succeeded / payment_failed / payment_cancelled for a subscription invoice."""
    subscription = lock(conn, subscription_id)
    invoice = lock_invoice(conn, invoice_id)
    assert subscription is not None and invoice is not None
    succeeded = event.event_type == "payment_succeeded"
    if invoice.status != "pending":
        if succeeded and invoice.status == "failed":
            log.error(
                "invoice %s is failed but payment %s succeeded: needs a human", invoice.id, invoice.payment_id
            )
        return f"skipped: invoice already {invoice.status}"
    if not succeeded:
        _fail(conn, subscription, invoice)
        return "ok"
    if not events.paid_in_full(event.data, invoice.amount, invoice.currency, f"invoice {invoice.id}"):
        return "error: amount mismatch"
    _pay(conn, subscription, invoice)
    return "ok"


def _pay(conn: db.Connection, subscription: Subscription, invoice: Invoice) -> None:
    conn.execute(QUERIES["pay_invoice"], {"invoice_id": invoice.id})
    if subscription.status != "pending_payment":
        log.error(
            "invoice %s paid for %s subscription %s: needs a human",
            invoice.id,
            subscription.status,
            subscription.id,
        )
        return
    conn.execute(QUERIES["activate"], {"subscription_id": subscription.id})
    log.info("subscription %s active: invoice %s paid", subscription.id, invoice.id)


def _fail(conn: db.Connection, subscription: Subscription, invoice: Invoice) -> None:
    conn.execute(QUERIES["fail_invoice"], {"invoice_id": invoice.id})
    if subscription.status == "pending_payment":
        _set_status(conn, subscription.id, "expired")
    log.info("subscription %s expired: invoice %s failed", subscription.id, invoice.id)


def _set_status(conn: db.Connection, subscription_id: uuid.UUID, status: str) -> None:
    conn.execute(QUERIES["set_status"], {"subscription_id": subscription_id, "status": status})


# -- the feature gate -------------------------------------------------------------------------------

_DENIED = {
    "pending_payment": "complete payment",
    "expired": "subscription expired",
    "canceled": "subscription canceled",
}


def status(conn: db.Connection, user_id: uuid.UUID) -> dict[str, Any]:
    """Only active and trialing grant features."""
    with conn.transaction():
        subscription = _one(conn, Subscription, "latest_subscription", user_id=user_id)
    if subscription is None:
        return {"user_id": str(user_id), "allowed": False, "reason": "no subscription", "status": None}
    out = {
        "user_id": str(user_id),
        "allowed": subscription.status in ("active", "trialing"),
        "status": subscription.status,
        "subscription_id": str(subscription.id),
        "plan_id": str(subscription.plan_id),
    }
    if subscription.status == "trialing":
        out["trial_ends_at"] = subscription.trial_ends_at
    elif subscription.status == "active":
        out["current_period_end"] = subscription.current_period_end
    else:
        out["reason"] = _DENIED[subscription.status]
    return out


# -- trial end --------------------------------------------------------------------------------------


def end_trials(
    conn: db.Connection, client: hyperswitch.Client | None, *, batch_size: int = TRIAL_END_BATCH
) -> dict[str, int]:
    """Move every trial past its end to pending_payment with an invoice and a PSP payment.

    Each batch is claimed with SKIP LOCKED and committed before any PSP call, so two sweeps at
    once never invoice a subscription twice. Without a provider the invoice waits: access still
    stops, and complete-subscription creates the payment once one is configured.
    """
    counts: Counter[str] = Counter()
    while True:
        with conn.transaction():
            claimed = conn.execute(QUERIES["claim_ended_trials"], {"limit": batch_size}).fetchall()
            started = [_end_trial(conn, Subscription(*row)) for row in claimed]
        for subscription, invoice in started:
            counts["ended"] += 1
            counts[_charge_after_trial(conn, client, subscription, invoice)] += 1
        if len(claimed) < batch_size:
            return {
                key: counts[key]
                for key in ("ended", "charged", "free", "rejected", "ambiguous", "no_provider")
            }


def _end_trial(conn: db.Connection, subscription: Subscription) -> tuple[Subscription, Invoice | None]:
    plan = _one(conn, Plan, "get_plan", plan_id=subscription.plan_id)
    assert plan is not None
    if plan.amount == 0:
        conn.execute(QUERIES["activate"], {"subscription_id": subscription.id})
        return replace(subscription, status="active"), None
    _set_status(conn, subscription.id, "pending_payment")
    subscription = replace(subscription, status="pending_payment")
    return subscription, new_invoice(conn, subscription, plan)


def _charge_after_trial(
    conn: db.Connection,
    client: hyperswitch.Client | None,
    subscription: Subscription,
    invoice: Invoice | None,
) -> str:
    if invoice is None:
        return "free"
    if client is None:
        log.warning("subscription %s trial ended with no payment provider: invoice waits", subscription.id)
        return "no_provider"
    try:
        charge(conn, client, subscription, invoice)
    except errors.PaymentRejected:
        return "rejected"
    except errors.PaymentProviderUnavailable:
        return "ambiguous"
    log.info("subscription %s trial ended: payment %s created", subscription.id, invoice.payment_id)
    return "charged"
