"""The billing sweeps that move subscriptions over time: trial end, renewal, dunning.

Each sweep claims its rows with `FOR UPDATE SKIP LOCKED` and commits the invoices it creates
before any PSP call, so two clocks or two workers never bill one period twice (the invoice's
unique (subscription, period, attempt) refuses a second row), and a crash between the commit and
the call leaves an unsent invoice that the next sweep sends again with the same payment_id.

- Trial end: a trial past its end → pending_payment + first invoice (on-session, saving the card).
- Renewal: an active paid subscription past `current_period_end` → an invoice for the next period
  (from the previous end: no drift), charged off-session with the saved method; without one, an
  on-session invoice and `past_due` at once. A pending plan change is applied first: the renewal
  bills the new plan (a free one: `active` without a period, no invoice). An upgrade still unpaid
  when its period ended is cancelled first: the renewal bills the plan in force.
- Dunning: `past_due` → a new off-session attempt at each delay of the schedule after the period's
  first failure; `expired` once the last attempt failed (without a saved method: once the last
  delay has passed).
- Canceled at period end → `canceled` when the period (or trial) is over, never invoiced.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

from psycopg.rows import class_row

from veza_worker import db, errors, hyperswitch
from veza_worker.settings import Settings
from veza_worker.subscriptions import invoices, model
from veza_worker.subscriptions.invoices import Invoice
from veza_worker.subscriptions.model import Subscription

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

BATCH = 50
UNSENT_AFTER = timedelta(minutes=2)  # an invoice this old with no answer from the PSP is sent again
TRIAL_END_COUNTS = ("ended", "charged", "free", "rejected", "ambiguous", "no_provider", "canceled")
RENEW_COUNTS = (
    "canceled",
    "upgrades_abandoned",
    "plan_changes",
    "invoiced",
    "on_session",
    "retried",
    "expired",
    "resent",
    "paid",
    "failed",
    "ambiguous",
)


# -- trial end --------------------------------------------------------------------------------------


def end_trials(
    conn: db.Connection, client: hyperswitch.Client | None, *, batch_size: int = BATCH
) -> dict[str, int]:
    """Move every trial past its end to pending_payment with an invoice and a PSP payment.

    Without a provider the invoice waits: access still stops (the gate reads trial_ends_at), and
    complete-subscription or the next sweep sends it once one is configured.
    """
    counts: Counter[str] = Counter(canceled=end_canceled(conn, batch_size=batch_size))
    with _stop_if_key_refused(counts, TRIAL_END_COUNTS):
        while True:
            with conn.transaction():
                claimed = _claim(conn, "claim_ended_trials", batch_size)
                started = [_end_trial(conn, subscription) for subscription in claimed]
            counts["ended"] += len(started)
            for subscription, invoice in started:
                counts[_charge_after_trial(conn, client, subscription, invoice)] += 1
            if len(claimed) < batch_size:
                break
    return {key: counts[key] for key in TRIAL_END_COUNTS}


@contextmanager
def _stop_if_key_refused(counts: Counter[str], keys: tuple[str, ...]) -> Iterator[None]:
    """A 401/403 on a create stops the sweep: every other create would be refused the same. Its
    invoice, and those not sent yet, stay pending and unsent (sent again later); the command
    exits 1, its counts printed."""
    try:
        yield
    except errors.PaymentProviderMisconfigured as exc:
        counts["ambiguous"] += 1
        raise errors.PaymentProviderMisconfigured(str(exc), {key: counts[key] for key in keys}) from exc


def _claim(conn: db.Connection, query: str, limit: int) -> list[Subscription]:
    with conn.cursor(row_factory=class_row(Subscription)) as cur:
        return cur.execute(QUERIES[query], {"limit": limit}).fetchall()


def _end_trial(conn: db.Connection, subscription: Subscription) -> tuple[Subscription, Invoice | None]:
    plan = model.get_plan(conn, subscription.plan_id)
    if plan.amount == 0:
        conn.execute(QUERIES["activate_free"], {"subscription_id": subscription.id})
        return replace(subscription, status=model.Status.ACTIVE), None
    model.set_status(conn, subscription.id, model.Status.PENDING_PAYMENT)
    subscription = replace(subscription, status=model.Status.PENDING_PAYMENT)
    invoice = invoices.new(conn, subscription, None, off_session=False)
    assert invoice is not None  # the claim holds the row: nobody else invoices it
    return subscription, invoice


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
    sent = invoices.send(conn, client, invoice.id)
    if sent.status == invoices.Status.FAILED:
        return "rejected"
    if sent.submitted_at is None:
        return "ambiguous"
    log.info("subscription %s trial ended: payment %s created", subscription.id, invoice.payment_id)
    return "charged"


def end_canceled(conn: db.Connection, *, batch_size: int = BATCH) -> int:
    """Subscriptions canceled at period end whose period or trial is over → canceled."""
    total = 0
    while True:
        with conn.transaction():
            ended = conn.execute(QUERIES["end_canceled"], {"limit": batch_size}).fetchall()
        for (subscription_id,) in ended:
            log.info("subscription %s canceled: its period ended", subscription_id)
        total += len(ended)
        if len(ended) < batch_size:
            return total


# -- renewal and dunning ----------------------------------------------------------------------------


def renew(
    conn: db.Connection, client: hyperswitch.Client | None, settings: Settings, *, batch_size: int = BATCH
) -> dict[str, int]:
    """One renew sweep: period-end cancels, renewals, dunning steps, and unsent invoices sent again."""
    counts: Counter[str] = Counter(canceled=end_canceled(conn, batch_size=batch_size))
    with _stop_if_key_refused(counts, RENEW_COUNTS):
        if client is not None:
            _abandon_stale_upgrades(conn, client, counts, batch_size)
        _renewals(conn, client, counts, batch_size)
        _dunning(conn, client, settings.subscription_dunning_schedule, counts, batch_size)
        if client is not None:
            _resend(conn, client, counts, batch_size)
    log.info("renew sweep %s", " ".join(f"{key}={counts[key]}" for key in RENEW_COUNTS))
    return {key: counts[key] for key in RENEW_COUNTS}


def _renewals(
    conn: db.Connection, client: hyperswitch.Client | None, counts: Counter[str], batch_size: int
) -> None:
    while True:
        with conn.transaction():
            claimed = [r[0] for r in conn.execute(QUERIES["claim_due_renewals"], {"limit": batch_size})]
            opened = [i for i in (_open_renewal(conn, s, counts) for s in claimed) if i is not None]
        _send_all(conn, client, opened, counts)
        if len(claimed) < batch_size or not opened:
            return


def _open_renewal(conn: db.Connection, subscription_id: uuid.UUID, counts: Counter[str]) -> Invoice | None:
    """The next period's invoice, in the claim's transaction; without a saved method the
    subscription is past_due at once (the customer must pay on-session)."""
    subscription = model.lock(conn, subscription_id)
    assert subscription is not None
    plan = model.get_plan(conn, subscription.pending_plan_id or subscription.plan_id)
    if subscription.pending_plan_id is not None:
        _apply_plan_change(conn, subscription, plan, counts)
        if plan.amount == 0:
            return None
    off_session = subscription.payment_method_id is not None
    period_start = subscription.current_period_end
    invoice = invoices.new(conn, subscription, period_start, off_session=off_session, plan=plan)
    if invoice is None:
        return None  # another sweep made this period's invoice first
    counts["invoiced"] += 1
    if not off_session:
        counts["on_session"] += 1
        model.set_past_due(conn, subscription.id)
        log.info("subscription %s past_due: no saved payment method for the renewal", subscription.id)
    return invoice


def _apply_plan_change(
    conn: db.Connection, subscription: Subscription, plan: model.Plan, counts: Counter[str]
) -> None:
    """The period is over: a pending downgrade, interval change or move to a free plan takes effect."""
    model.switch_plan(conn, subscription.id, plan.id)
    if plan.amount == 0:
        conn.execute(QUERIES["activate_free"], {"subscription_id": subscription.id})
    counts["plan_changes"] += 1
    log.info("subscription %s: plan %s → %s at period end", subscription.id, subscription.plan_id, plan.id)


def _abandon_stale_upgrades(
    conn: db.Connection, client: hyperswitch.Client, counts: Counter[str], batch_size: int
) -> None:
    """Upgrades still unpaid when their period ended are cancelled at the PSP (if paid after all,
    the money goes back automatically and the plan stays), so the renewal bills the plan in force;
    one the PSP cannot cancel now waits, and so does its renewal."""
    with conn.transaction():
        stale = [r[0] for r in conn.execute(QUERIES["stale_upgrades"], {"limit": batch_size})]
    for invoice_id in stale:
        with conn.transaction():
            subscription, invoice = invoices.lock_pair(conn, invoice_id)
            if invoice.status != invoices.Status.PENDING:
                continue
            reason = "the period ended before the upgrade was paid"
            if invoices.abandon(conn, client, subscription, invoice, reason) is not None:
                counts["upgrades_abandoned"] += 1


def _dunning(
    conn: db.Connection,
    client: hyperswitch.Client | None,
    delays: tuple[timedelta, ...],
    counts: Counter[str],
    batch_size: int,
) -> None:
    while True:
        with conn.transaction():
            claimed = conn.execute(
                QUERIES["claim_dunning"], {"limit": batch_size, "delays": list(delays)}
            ).fetchall()
            opened = [_open_retry(conn, s) for s, retry in claimed if retry]
            retries = [i for i in opened if i is not None]
        _send_all(conn, client, retries, counts)
        counts["retried"] += len(retries)
        expired = sum(_expire(conn, client, s) for s, retry in claimed if not retry)
        counts["expired"] += expired
        if len(claimed) < batch_size or not (retries or expired):
            return


def _open_retry(conn: db.Connection, subscription_id: uuid.UUID) -> Invoice | None:
    subscription = model.lock(conn, subscription_id)
    assert subscription is not None
    invoice = invoices.new(conn, subscription, subscription.current_period_end, off_session=True)
    if invoice is not None:
        conn.execute(QUERIES["next_dunning_step"], {"subscription_id": subscription.id})
        log.info(
            "subscription %s dunning step %d: attempt %d",
            subscription.id,
            subscription.dunning_step + 1,
            invoice.attempt,
        )
    return invoice


def _expire(conn: db.Connection, client: hyperswitch.Client | None, subscription_id: uuid.UUID) -> int:
    """Dunning is over. A pending on-session attempt is cancelled at the PSP first: if it was paid
    after all, the subscription is active again and stays so."""
    with conn.transaction():
        subscription = model.lock(conn, subscription_id)
        assert subscription is not None
        invoice = invoices.pending(conn, subscription_id)
        if subscription.status == model.Status.PAST_DUE and invoice is not None and client is not None:
            invoices.abandon(conn, client, subscription, invoice, "subscription expired: payment overdue")
            subscription = model.lock(conn, subscription_id)
            assert subscription is not None
        if subscription.status != model.Status.PAST_DUE:
            return 0
        model.set_status(conn, subscription_id, model.Status.EXPIRED)
    log.info("subscription %s expired: dunning exhausted", subscription_id)
    return 1


def _resend(conn: db.Connection, client: hyperswitch.Client, counts: Counter[str], batch_size: int) -> None:
    params = {"older_than": UNSENT_AFTER, "limit": batch_size}
    with conn.transaction():
        unsent = [r[0] for r in conn.execute(QUERIES["unsent_invoices"], params)]
    for invoice_id in unsent:
        counts["resent"] += 1
        _count(invoices.send(conn, client, invoice_id), counts)


def _send_all(
    conn: db.Connection, client: hyperswitch.Client | None, opened: list[Invoice], counts: Counter[str]
) -> None:
    if client is None:
        if opened:
            log.warning("%d renewal invoices wait: no payment provider configured", len(opened))
        return
    for invoice in opened:
        _count(invoices.send(conn, client, invoice.id), counts)


def _count(sent: Invoice, counts: Counter[str]) -> None:
    if sent.status in (invoices.Status.PAID, invoices.Status.FAILED):
        counts[sent.status] += 1
    elif sent.submitted_at is None:
        counts["ambiguous"] += 1
