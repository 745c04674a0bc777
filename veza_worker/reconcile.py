"""The reconciler: what a lost webhook, a PSP that gave up, or our own crash left stuck.

Each phase claims its stuck rows one at a time (`FOR UPDATE SKIP LOCKED`, so ticks run side by
side), asks the PSP with a forced sync, and feeds a terminal answer through the webhook handlers
as a synthetic event recorded in the audit log: a late real webhook is then a visible no-op. A PSP
read error leaves the row for the next tick. A row still stuck after 5 answers is logged once as
needing a human. Every action is one structured log line.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import class_row

from veza_worker import db, errors, hyperswitch, refunds, subscriptions, webhooks
from veza_worker.settings import Settings

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

NEEDS_A_HUMAN_AFTER = 5  # PSP answers that left a row stuck
COOL_DOWN = timedelta(minutes=1)  # a row checked this recently is not asked about again

# Hyperswitch's IntentStatus values that end a payment, and the event each one stands for;
# `not_found` is _fetch's stand-in for a payment the PSP never had: no money was taken.
PAYMENT_EVENTS = {
    "not_found": "payment_failed",
    "succeeded": "payment_succeeded",
    "failed": "payment_failed",
    "cancelled": "payment_cancelled",
    "cancelled_post_capture": "payment_cancelled",
    "expired": "payment_cancelled",
}
REFUND_EVENTS = {"succeeded": "refund_succeeded", "failed": "refund_failed"}


@dataclass(frozen=True)
class Stuck:
    """A claimed row: our id, the PSP's id for it, how long it has been stuck, answers so far."""

    id: uuid.UUID
    psp_id: str
    stuck_for: timedelta
    checks: int


@dataclass(frozen=True)
class Outcome:
    action: str  # settled | unchanged | adopted | client_secret_stored | cancelled | resent | psp_error
    psp_status: str | None = None
    result: str | None = None  # the synthetic event's processing_result
    log_id: int | None = None

    @property
    def answered(self) -> bool:
        return self.action != "psp_error"

    @property
    def still_stuck(self) -> bool:
        return self.action in ("unchanged", "client_secret_stored", "adopted")


Settle = Callable[[db.Connection, hyperswitch.Client, Settings, Stuck], Outcome]


def tick(conn: db.Connection, client: hyperswitch.Client, settings: Settings) -> dict[str, dict[str, int]]:
    """One pass over every phase; per-phase counts."""
    with conn.transaction():
        row = conn.execute(QUERIES["due_before"], {"cool_down": COOL_DOWN}).fetchone()
    assert row is not None
    due_before: datetime = row[0]
    phases: list[tuple[str, str, str, timedelta, Settle]] = [
        ("orders", "order", "claim_order", settings.reconcile_order_stuck_after, _order),
        ("refunds", "refund", "claim_refund", settings.reconcile_refund_stuck_after, _refund),
        ("orphan_refunds", "refund", "claim_orphan_refund", settings.reconcile_refund_orphan_after, _orphan),
        ("subscriptions", "invoice", "claim_invoice", settings.reconcile_subscription_stuck_after, _invoice),
    ]
    counts = {
        name: _phase(conn, client, settings, name, kind, claim, stuck_after, settle, due_before)
        for name, kind, claim, stuck_after, settle in phases
    }
    log.info("reconcile tick %s", " ".join(f"{name}={dict(phase)}" for name, phase in counts.items()))
    return counts


def _phase(
    conn: db.Connection,
    client: hyperswitch.Client,
    settings: Settings,
    name: str,
    kind: str,
    claim: str,
    stuck_after: timedelta,
    settle: Settle,
    due_before: datetime,
) -> dict[str, int]:
    counts: Counter[str] = Counter()
    params = {"stuck_after": stuck_after, "due_before": due_before}
    for _ in range(settings.reconcile_batch_size):
        try:
            with conn.transaction(), conn.cursor(row_factory=class_row(Stuck)) as cur:
                stuck = cur.execute(QUERIES[claim], params).fetchone()
                if stuck is None:
                    break
                if not _begin_check(conn, kind, stuck, due_before):
                    continue  # another tick checked it meanwhile
                outcome = settle(conn, client, settings, stuck)
                checks = _record_answer(conn, kind, stuck, outcome)
        except Exception:  # one bad row must not stop the tick; it is rolled back and retried next tick
            log.exception("reconcile phase=%s: a row failed and was rolled back", name)
            counts["errors"] += 1
            continue
        counts[outcome.action] += 1
        _log(name, stuck, outcome, checks)
    return {"checked": sum(counts.values()), **counts}


def _begin_check(conn: db.Connection, kind: str, stuck: Stuck, due_before: datetime) -> bool:
    params = {"kind": kind, "row_id": stuck.id, "due_before": due_before}
    return conn.execute(QUERIES["begin_check"], params).fetchone() is not None


def _record_answer(conn: db.Connection, kind: str, stuck: Stuck, outcome: Outcome) -> int:
    params = {
        "kind": kind,
        "row_id": stuck.id,
        "answered": outcome.answered,
        "psp_status": outcome.psp_status,
    }
    row = conn.execute(QUERIES["record_answer"], params).fetchone()
    return int(row[0]) if row else 0


def _log(phase: str, stuck: Stuck, outcome: Outcome, checks: int) -> None:
    level = logging.WARNING if outcome.action == "psp_error" else logging.INFO
    log.log(
        level,
        "reconcile phase=%s id=%s psp_id=%s action=%s psp_status=%s result=%r log_id=%s stuck_for_s=%d",
        phase,
        stuck.id,
        stuck.psp_id,
        outcome.action,
        outcome.psp_status,
        outcome.result,
        outcome.log_id,
        stuck.stuck_for.total_seconds(),
    )
    if outcome.still_stuck and checks == NEEDS_A_HUMAN_AFTER:
        log.warning(
            "reconcile needs a human: phase=%s id=%s psp_id=%s psp_status=%s checks=%d stuck_for_s=%d",
            phase,
            stuck.id,
            stuck.psp_id,
            outcome.psp_status,
            checks,
            stuck.stuck_for.total_seconds(),
        )


def _synthetic(
    conn: db.Connection, settings: Settings, event_type: str, content_type: str, obj: dict[str, Any]
) -> Outcome:
    """Feed the PSP's answer through the webhook handlers, recorded like a delivery."""
    log_id, result = webhooks.apply_synthetic(conn, settings, event_type, content_type, obj)
    action = "settled" if result == "ok" else "unchanged"
    return Outcome(action, str(obj.get("status")), result, log_id)


def _fetch(get: Callable[[str], dict[str, Any]], psp_id: str, id_field: str) -> dict[str, Any] | None:
    """The PSP's object; a stand-in with status `not_found` when it has none; None on a read error."""
    try:
        return get(psp_id)
    except errors.HyperswitchNotFound:
        return {id_field: psp_id, "status": "not_found"}
    except errors.HyperswitchError as exc:  # unavailable, or an answer we cannot act on (401, 400)
        log.warning("reconcile: reading %s failed: %s", psp_id, exc)
        return None


# -- the phases -------------------------------------------------------------------------------------


def _order(conn: db.Connection, client: hyperswitch.Client, settings: Settings, stuck: Stuck) -> Outcome:
    """A pending order: the PSP's payment decides; none at all means no money was taken."""
    payment = _fetch(client.get_payment, stuck.psp_id, "payment_id")
    if payment is None:
        return Outcome("psp_error")
    status = str(payment.get("status"))
    event_type = PAYMENT_EVENTS.get(status)
    if event_type is None:
        return Outcome("unchanged", status)
    return _synthetic(conn, settings, event_type, "payment_details", payment)


def _refund(conn: db.Connection, client: hyperswitch.Client, settings: Settings, stuck: Stuck) -> Outcome:
    """A submitted refund with no final webhook: the PSP's status, with its error message."""
    refund = _fetch(client.get_refund, stuck.psp_id, "refund_id")
    if refund is None:
        return Outcome("psp_error")
    status = str(refund.get("status"))
    if status not in REFUND_EVENTS:
        if status == "not_found":
            log.error("reconcile: submitted refund %s is unknown to the payment provider", stuck.psp_id)
        return Outcome("unchanged", status)
    return _synthetic(conn, settings, REFUND_EVENTS[status], "refund_details", refund)


def _orphan(conn: db.Connection, client: hyperswitch.Client, settings: Settings, stuck: Stuck) -> Outcome:
    """A refund phase 2 never confirmed. Unknown to the PSP → failed; known → adopt its status."""
    refund = _fetch(client.get_refund, stuck.psp_id, "refund_id")
    if refund is None:
        return Outcome("psp_error")
    status = str(refund.get("status"))
    if status == "not_found":
        log.error(
            "reconcile: refund %s never reached the payment provider: failed, order reopened", stuck.psp_id
        )
        failed = {**refund, "status": "failed", "error_message": "refund never reached the payment provider"}
        return _synthetic(conn, settings, "refund_failed", "refund_details", failed)
    refunds.mark_submitted(conn, stuck.id)  # from now on an ordinary refund
    if status not in REFUND_EVENTS:
        return Outcome("adopted", status)
    return _synthetic(conn, settings, REFUND_EVENTS[status], "refund_details", refund)


def _invoice(conn: db.Connection, client: hyperswitch.Client, settings: Settings, stuck: Stuck) -> Outcome:
    """A pending invoice: the PSP's payment decides. One the PSP never got is sent (same payment_id);
    one that is not final is cancelled at the PSP when nobody can or will pay it any more; an
    unpaid one gives its missing client_secret."""
    payment = _fetch(client.get_payment, stuck.psp_id, "payment_id")
    if payment is None:
        return Outcome("psp_error")
    invoice = subscriptions.lock_invoice(conn, stuck.id)
    assert invoice is not None
    status = str(payment.get("status"))
    if status == "not_found" and invoice.submitted_at is None:  # our create never reached it
        sent = subscriptions.send(conn, client, invoice.id)
        return Outcome("resent" if sent.submitted_at is not None else "psp_error", status)
    event_type = PAYMENT_EVENTS.get(status)
    if event_type is not None:
        return _synthetic(conn, settings, event_type, "payment_details", payment)
    subscription = subscriptions.lock(conn, invoice.subscription_id)
    assert subscription is not None
    reason = _abandon_reason(subscription, invoice, status, stuck.stuck_for, settings)
    if reason is not None:
        result = subscriptions.abandon(conn, client, subscription, invoice, reason)
        log.info(
            "reconcile: invoice %s payment %s abandoned (%s): %s", invoice.id, stuck.psp_id, reason, result
        )
        return Outcome("cancelled" if result is not None else "psp_error", status, result)
    if invoice.client_secret is None and payment.get("client_secret"):
        subscriptions.store_client_secret(conn, invoice, payment["client_secret"])
        return Outcome("client_secret_stored", status)
    return Outcome("unchanged", status)


def _abandon_reason(
    subscription: subscriptions.Subscription,
    invoice: subscriptions.Invoice,
    psp_status: str,
    age: timedelta,
    settings: Settings,
) -> str | None:
    """Why a payment that is not final should be cancelled now, or None to keep waiting."""
    if subscription.status in ("expired", "canceled"):
        return f"subscription {subscription.status}"
    if invoice.off_session and psp_status == "requires_customer_action":
        return "authentication required off-session"
    if age >= settings.subscription_payment_expires_after:
        return "payment not completed in time"
    return None
