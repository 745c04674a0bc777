"""The subscription commands: subscribe, complete-subscription, cancel-subscription, resume-subscription.

Each runs in its own transaction with the subscription (or, for subscribe, the user) locked; a
PSP payment is created after its invoice is committed (invoices.send), so a crash or an ambiguous
answer leaves a pending invoice that the same command, or a sweep, sends again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from veza_worker import db, errors, hyperswitch
from veza_worker.settings import Settings
from veza_worker.subscriptions import invoices, model
from veza_worker.subscriptions.invoices import Invoice
from veza_worker.subscriptions.model import Plan, Subscription

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

NOT_CONFIGURED = "payment provider not configured — paid plans temporarily unavailable"


def locked(conn: db.Connection, subscription_id: uuid.UUID) -> Subscription:
    """The subscription, locked; exit 1 when there is none."""
    subscription = model.lock(conn, subscription_id)
    if subscription is None:
        raise errors.NotFound(f"subscription {subscription_id} not found")
    return subscription


def require(client: hyperswitch.Client | None) -> hyperswitch.Client:
    """The PSP client a paid step needs; exit 1 before anything is written when none is configured."""
    if client is None:
        raise errors.PaymentProviderNotConfigured(NOT_CONFIGURED)
    return client


def _lock_live(conn: db.Connection, user_id: uuid.UUID) -> Subscription | None:
    """The user's live subscription, if any (a unique index allows one)."""
    return db.one(conn, Subscription, QUERIES["lock_live_subscription"], {"user_id": user_id})


# -- subscribe and complete-subscription ------------------------------------------------------------


def subscribe(
    conn: db.Connection, client: hyperswitch.Client | None, user_id: uuid.UUID, plan_id: uuid.UUID
) -> dict[str, Any]:
    """`{subscription_id, status, client_secret?, payment_id?}`; a pending one to the same plan comes back."""
    with conn.transaction():
        conn.execute(QUERIES["lock_user"], {"user_id": user_id})
        plan = model.find_plan(conn, plan_id)
        if plan is None:
            raise errors.NotFound(f"plan {plan_id} not found")
        live = _lock_live(conn, user_id)
        if live is None:
            subscription, invoice = _create(conn, client, user_id, plan)
        else:
            subscription, invoice = live, _awaiting_payment(conn, live, plan)
    if invoice is not None and invoice.submitted_at is None:
        invoice = invoices.send(conn, require(client), invoice.id, raise_errors=True)
    return invoices.view(subscription, invoice)


def complete(
    conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID
) -> dict[str, Any]:
    """A payable on-session attempt: the pending first payment, or for a past_due subscription the
    pending recovery attempt, created for the open period when none is pending."""
    with conn.transaction():
        subscription = locked(conn, subscription_id)
        if subscription.status not in model.AWAITING_PAYMENT:
            raise errors.DomainError(
                f"subscription {subscription_id} is {subscription.status}, not pending_payment or past_due"
            )
        invoice = invoices.pending(conn, subscription.id)
        if invoice is None and subscription.status == model.Status.PAST_DUE:
            require(client)  # before anything is written
            invoice = invoices.new(conn, subscription, subscription.current_period_end, off_session=False)
        if invoice is None:  # a pending_payment subscription always has one; say so loudly if not
            raise errors.DomainError(f"subscription {subscription_id} has no pending invoice")
        if invoice.off_session:
            raise errors.DomainError(
                f"renewal payment in progress: payment {invoice.payment_id} of subscription {subscription_id}"
            )
    if invoice.submitted_at is None:  # new, or the first create was ambiguous: same payment_id again
        invoice = invoices.send(conn, require(client), invoice.id, raise_errors=True)
    return invoices.view(subscription, invoice)


def _create(
    conn: db.Connection, client: hyperswitch.Client | None, user_id: uuid.UUID, plan: Plan
) -> tuple[Subscription, Invoice | None]:
    if plan.amount == 0:
        return _insert(conn, user_id, plan, model.Status.ACTIVE), None
    ever_trialed = conn.execute(QUERIES["ever_trialed"], {"user_id": user_id}).fetchone()
    if plan.trial_days > 0 and not (ever_trialed and ever_trialed[0]):
        return _insert(conn, user_id, plan, model.Status.TRIALING), None
    require(client)  # before anything is written
    subscription = _insert(conn, user_id, plan, model.Status.PENDING_PAYMENT)
    return subscription, invoices.new(conn, subscription, None, off_session=False)


def _insert(conn: db.Connection, user_id: uuid.UUID, plan: Plan, status: model.Status) -> Subscription:
    subscription_id = uuid.uuid4()
    trial_days = plan.trial_days if status == model.Status.TRIALING else 0
    params = {"id": subscription_id, "user_id": user_id, "plan_id": plan.id, "status": status}
    conn.execute(QUERIES["insert_subscription"], {**params, "trial_days": trial_days})
    log.info("subscription %s created for user %s on plan %s: %s", subscription_id, user_id, plan.id, status)
    return locked(conn, subscription_id)


def _awaiting_payment(conn: db.Connection, live: Subscription, plan: Plan) -> Invoice:
    if live.status != model.Status.PENDING_PAYMENT:
        raise errors.DomainError(
            f"user {live.user_id} already has subscription {live.id}, which is {live.status}"
        )
    if live.plan_id != plan.id:
        raise errors.DomainError(
            f"user {live.user_id} has subscription {live.id} awaiting payment for another plan:"
            " complete it or let it expire"
        )
    invoice = invoices.pending(conn, live.id)
    if invoice is None:
        raise errors.DomainError(f"subscription {live.id} has no pending invoice")
    return invoice


# -- cancel and resume ------------------------------------------------------------------------------


def cancel(
    conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID, *, now: bool
) -> dict[str, Any]:
    """At period end (the default for active/trialing) or at once; a pending invoice's payment is
    cancelled at the PSP and the invoice failed."""
    with conn.transaction():
        subscription = locked(conn, subscription_id)
        if subscription.status in model.ENDED:
            raise errors.DomainError(f"subscription {subscription_id} is already {subscription.status}")
        ends = _access_ends(subscription)
        if (
            not now
            and ends is not None
            and ends > datetime.now(UTC)
            and subscription.status != model.Status.PAST_DUE
        ):
            conn.execute(
                QUERIES["set_cancel_at_period_end"], {"subscription_id": subscription.id, "cancel": True}
            )
            log.info("subscription %s cancels at %s", subscription.id, ends.isoformat())
        else:
            cancel_now(conn, client, subscription)
        return cancel_view(locked(conn, subscription_id))


def cancel_now(conn: db.Connection, client: hyperswitch.Client | None, subscription: Subscription) -> None:
    """Cancel a locked subscription at once; its pending invoice's PSP payment is cancelled too."""
    conn.execute(QUERIES["cancel_now"], {"subscription_id": subscription.id})
    log.info("subscription %s canceled (was %s)", subscription.id, subscription.status)
    invoice = invoices.pending(conn, subscription.id)
    if invoice is None:
        return
    canceled = replace(subscription, status=model.Status.CANCELED)
    if client is None or invoices.abandon(conn, client, canceled, invoice, "subscription canceled") is None:
        log.warning(
            "subscription %s canceled with payment %s still pending at the PSP: the reconciler cancels it",
            subscription.id,
            invoice.payment_id,
        )


def cancel_from_event(conn: db.Connection, subscription: Subscription, settings: Settings, why: str) -> None:
    """Cancel a locked subscription at once from a webhook handler (a lost dispute, its invoice paid
    back), as `cancel-subscription --now` does. Handlers get no PSP client; these events are rare
    enough to open one of their own for a pending invoice's payment."""
    if subscription.status in model.ENDED:
        return
    log.warning("subscription %s canceled: %s", subscription.id, why)
    client = hyperswitch.from_settings(settings)
    try:
        cancel_now(conn, client, subscription)
    finally:
        if client is not None:
            client.close()


def resume(conn: db.Connection, subscription_id: uuid.UUID) -> dict[str, Any]:
    """Undo a cancel at period end, while the subscription is still active or trialing."""
    with conn.transaction():
        subscription = locked(conn, subscription_id)
        if subscription.status not in (model.Status.ACTIVE, model.Status.TRIALING):
            raise errors.DomainError(
                f"subscription {subscription_id} is {subscription.status}: only active or trialing can resume"
            )
        if subscription.cancel_at_period_end:
            conn.execute(
                QUERIES["set_cancel_at_period_end"], {"subscription_id": subscription.id, "cancel": False}
            )
            log.info("subscription %s resumed", subscription.id)
        return cancel_view(locked(conn, subscription_id))


def _access_ends(subscription: Subscription) -> datetime | None:
    if subscription.status == model.Status.TRIALING:
        return subscription.trial_ends_at
    if subscription.status == model.Status.ACTIVE:
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
