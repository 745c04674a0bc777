"""change-plan: a subscription moves to another plan — an upgrade now, for the prorated difference;
a downgrade, an interval change or a move to a free plan at period end. Nothing is refunded.

    trialing                                  → switches now; nothing charged; the trial goes on
    the plan in force                         → a pending change is cleared
    active free → paid                        → a `first` invoice at the full price; paid: the new
                                                plan starts a period
    active free → free                        → switches now
    active paid → a higher price, same interval and currency, before current_period_end
                                              → a `proration` invoice of prorate(); paid: the plan
                                                switches, the period does not move; failed: nothing
                                                changes. Nothing owed (an equal price, the last
                                                microseconds of the period): switches now
    anything else (a lower price, another interval or currency, a free plan, the period already
    over)                                     → pending_plan_id, applied by the renewal (billing.py)

`decide` is the rule, a pure function; `change` runs it on the locked subscription, so a
`--preview` prints what the change would charge at that instant. An upgrade's invoice is
committed, then sent like any other (invoices.send: its Idempotency-Key is its own id, off-session
with the saved method, else on-session): the same change asked again, even at once, finds it
pending and returns it, so one change is one invoice and one PSP payment.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from veza_worker import db, errors, hyperswitch
from veza_worker.subscriptions import commands, invoices, model, periods
from veza_worker.subscriptions.invoices import Invoice
from veza_worker.subscriptions.model import Plan, Subscription

log = logging.getLogger(__name__)

DECLINED = "payment declined: plan unchanged"


class Action(StrEnum):
    CLEAR = "clear"  # the plan in force: a pending change is cleared
    SWITCH = "switch"  # now, nothing to pay
    FIRST = "first"  # a free plan's upgrade: the full price, a period starts when paid
    PRORATE = "proration"  # an upgrade: the prorated difference, the plan switches when paid
    AT_PERIOD_END = "at_period_end"  # pending_plan_id: the renewal applies it


CHARGED = (Action.FIRST, Action.PRORATE)


@dataclass(frozen=True)
class Change:
    action: Action
    amount_due: int = 0

    @property
    def effective(self) -> str:
        return "period_end" if self.action == Action.AT_PERIOD_END else "now"


def decide(subscription: Subscription, current: Plan, new: Plan, now: datetime) -> Change:
    """What moving `subscription` from `current` to `new` at `now` does (module docstring)."""
    if new.id == current.id:
        return Change(Action.CLEAR)
    if subscription.status == model.Status.TRIALING:
        return Change(Action.SWITCH)
    if current.amount == 0:
        return Change(Action.FIRST, new.amount) if new.amount > 0 else Change(Action.SWITCH)
    start, end = subscription.current_period_start, subscription.current_period_end
    if start is None or end is None or now >= end or not _upgrade(current, new):
        return Change(Action.AT_PERIOD_END)
    due = periods.prorate(current.amount, new.amount, periods.Period(start, end), now)
    return Change(Action.PRORATE, due) if due > 0 else Change(Action.SWITCH)


def _upgrade(current: Plan, new: Plan) -> bool:
    """Same interval and currency, a price at least as high: what can take effect at once."""
    return (
        new.interval == current.interval and new.currency == current.currency and new.amount >= current.amount
    )


def change(
    conn: db.Connection,
    client: hyperswitch.Client | None,
    subscription_id: uuid.UUID,
    plan_id: uuid.UUID,
    *,
    preview: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`{subscription_id, plan_id, pending_plan_id, effective, amount_due, invoice_id, payment_id,
    client_secret}`; with `preview`, what the change would do at this instant, nothing written."""
    with conn.transaction():
        subscription = commands.locked(conn, subscription_id)
        plan = model.find_plan(conn, plan_id)
        if plan is None:
            raise errors.NotFound(f"plan {plan_id} not found")
        _check_live(subscription)
        invoice = _pending_change(conn, subscription, plan)
        if invoice is not None:  # the same change again: its invoice (kinds and actions share names)
            wanted = Change(Action(invoice.kind), invoice.amount)
        else:
            current = model.get_plan(conn, subscription.plan_id)
            wanted = decide(subscription, current, plan, now or datetime.now(UTC))
            if preview:
                return _view(_after(subscription, plan, wanted), wanted, None)
            if wanted.action in CHARGED:
                commands.require(client)  # before anything is written
            invoice = _apply(conn, subscription, plan, wanted)
        after = commands.locked(conn, subscription_id)
    if preview or invoice is None or invoice.submitted_at is not None:
        return _view(after, wanted, invoice)
    return _charge(conn, commands.require(client), invoice, wanted)


def _check_live(subscription: Subscription) -> None:
    if subscription.status not in (model.Status.ACTIVE, model.Status.TRIALING):
        raise errors.DomainError(
            f"subscription {subscription.id} is {subscription.status}: only an active or trialing"
            " subscription changes plan"
        )
    if subscription.cancel_at_period_end:
        raise errors.DomainError(
            f"subscription {subscription.id} cancels at period end: resume it before changing plan"
        )


def _pending_change(conn: db.Connection, subscription: Subscription, plan: Plan) -> Invoice | None:
    """The pending invoice of this very change; a different change while one is pending is refused."""
    pending = invoices.pending(conn, subscription.id)
    if pending is None or pending.kind == invoices.Kind.RENEWAL:
        return None  # a renewal under way: the period is over, the change waits for the next one
    if pending.plan_id != plan.id:
        raise errors.DomainError(
            f"plan change payment pending: payment {pending.payment_id} of subscription {subscription.id}"
            f" for plan {pending.plan_id} (pay it or let it expire)"
        )
    return pending


def _apply(conn: db.Connection, subscription: Subscription, plan: Plan, wanted: Change) -> Invoice | None:
    off_session = subscription.payment_method_id is not None
    if wanted.action == Action.CLEAR and subscription.pending_plan_id is None:
        return invoices.paid_upgrade(conn, subscription, plan.id)  # asked again: what paid for it
    if wanted.action == Action.AT_PERIOD_END and subscription.pending_plan_id == plan.id:
        return None  # asked again: already waiting for the renewal
    if wanted.action == Action.CLEAR:
        model.set_pending_plan(conn, subscription.id, None)
    elif wanted.action == Action.SWITCH:
        model.switch_plan(conn, subscription.id, plan.id)
    elif wanted.action == Action.AT_PERIOD_END:
        model.set_pending_plan(conn, subscription.id, plan.id)
    elif wanted.action == Action.FIRST:
        first = invoices.new(conn, subscription, None, off_session=off_session, plan=plan)
        assert first is not None, f"subscription {subscription.id} has a pending invoice"
        return first
    else:
        return invoices.new_proration(conn, subscription, plan, wanted.amount_due, off_session=off_session)
    log.info(
        "subscription %s: plan %s → %s (%s)", subscription.id, subscription.plan_id, plan.id, wanted.action
    )
    return None


def _after(subscription: Subscription, plan: Plan, wanted: Change) -> Subscription:
    """The subscription as the change leaves it before any payment: what a preview shows."""
    if wanted.action == Action.SWITCH:
        return replace(subscription, plan_id=plan.id, pending_plan_id=None)
    if wanted.action == Action.AT_PERIOD_END:
        return replace(subscription, pending_plan_id=plan.id)
    if wanted.action == Action.CLEAR:
        return replace(subscription, pending_plan_id=None)
    return subscription


def _charge(
    conn: db.Connection, client: hyperswitch.Client, invoice: Invoice, wanted: Change
) -> dict[str, Any]:
    """Send a committed change's invoice; the plan switches only once it is paid (here, when the
    off-session answer is final; else by its webhook or the reconciler)."""
    try:
        invoices.send(conn, client, invoice.id, raise_errors=True)
    except errors.PaymentRejected as exc:  # the invoice is failed: a decline, below
        log.info("subscription %s: plan change payment rejected: %s", invoice.subscription_id, exc)
    except errors.PaymentProviderUnavailable as exc:
        raise errors.PaymentProviderUnavailable(str(exc), _reread(conn, invoice, wanted)[1]) from exc
    sent, out = _reread(conn, invoice, wanted)
    if sent.status == invoices.Status.FAILED:
        raise errors.DomainError(DECLINED, out)
    return out


def _reread(conn: db.Connection, invoice: Invoice, wanted: Change) -> tuple[Invoice, dict[str, Any]]:
    with conn.transaction():
        subscription, sent = invoices.lock_pair(conn, invoice.id)
    return sent, _view(subscription, wanted, sent)


def _view(subscription: Subscription, wanted: Change, invoice: Invoice | None) -> dict[str, Any]:
    awaiting = invoice is not None and invoice.status == invoices.Status.PENDING and not invoice.off_session
    return {
        "subscription_id": str(subscription.id),
        "plan_id": str(subscription.plan_id),
        "pending_plan_id": str(subscription.pending_plan_id) if subscription.pending_plan_id else None,
        "effective": wanted.effective,
        "amount_due": invoice.amount if invoice is not None else wanted.amount_due,
        "invoice_id": str(invoice.id) if invoice is not None else None,
        "payment_id": invoice.payment_id if invoice is not None else None,
        "client_secret": invoice.client_secret if awaiting and invoice is not None else None,
    }
