"""The reconciler: what a lost webhook, a PSP that gave up, or our own crash left stuck.

Each phase claims its stuck rows one at a time (`FOR UPDATE SKIP LOCKED`, so ticks run side by
side), asks the PSP with a forced sync, and feeds a terminal answer through the webhook handlers
as a synthetic event recorded in the audit log: a late real webhook is then a visible no-op. A PSP
read error leaves the row for the next tick. A row still stuck after 5 answers, or left to a person
after its answer could not be applied or our code raised on it, opens a discrepancy (in the same
transaction as its state). Every action is one structured log line.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import class_row

from veza_worker import db, discrepancies, disputes, errors, hyperswitch, metrics, payouts, refunds, webhooks
from veza_worker.settings import Settings
from veza_worker.subscriptions import invoices, model

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

NEEDS_A_HUMAN_AFTER = 5  # PSP answers that left a row stuck
COOL_DOWN = timedelta(minutes=1)  # a row checked this recently is not asked about again

# Hyperswitch's IntentStatus values that end a payment, and the event each one stands for;
# `not_found` is _fetch's stand-in for a payment the PSP never had: no money was taken.
PAYMENT_EVENTS = {
    "not_found": "payment_failed",
    "succeeded": "payment_succeeded",
    "partially_captured": "payment_succeeded",  # the object's amount_received makes it a partial capture
    "failed": "payment_failed",
    "cancelled": "payment_cancelled",
    "cancelled_post_capture": "payment_cancelled_post_capture",
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


class PspMisconfigured(Exception):
    """The PSP says it has none of our objects, not even one we know it holds: a wrong
    HYPERSWITCH_URL or HYPERSWITCH_API_KEY, not a missing object. Nothing may change."""


class _ReadError(Exception):
    """A PSP read failed: the row's transaction is rolled back, so no cool-down starts."""


@dataclass
class Canary:
    """Can the PSP see our objects? Asked once per tick, only when a phase is about to act on a
    "no such object" answer: a payment we hold as paid must be found."""

    conn: db.Connection
    client: hyperswitch.Client
    answer: bool | None = None

    def sees_us(self) -> bool:
        if self.answer is None:
            self.answer = self._ask()
        return self.answer

    def _ask(self) -> bool:
        row = self.conn.execute(QUERIES["canary_payment"]).fetchone()
        if row is None:
            return True  # nothing held as paid yet: nothing to check against
        try:
            self.client.get_payment(row[0], force_sync=False)
        except errors.HyperswitchNotFound:
            return False
        except errors.HyperswitchError as exc:
            raise _ReadError(str(exc)) from exc
        return True


@dataclass(frozen=True)
class Context:
    conn: db.Connection
    client: hyperswitch.Client
    settings: Settings
    canary: Canary


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str  # reconcile_state.kind
    claim: str  # the claim query
    stuck_after: timedelta
    settle: Callable[[Context, Stuck], Outcome]


STOP_AFTER_READ_ERRORS = 3  # consecutive: the PSP is down, the phase stops for this tick
GIVE_UP_AFTER_FAILURES = 3  # our own code raised on the row this many times: a human looks


def tick(conn: db.Connection, client: hyperswitch.Client, settings: Settings) -> dict[str, dict[str, Any]]:
    """One pass over every phase; per-phase counts."""
    with conn.transaction():
        row = conn.execute(QUERIES["due_before"], {"cool_down": COOL_DOWN}).fetchone()
    assert row is not None
    due_before: datetime = row[0]
    context = Context(conn, client, settings, Canary(conn, client))
    phases = [
        Phase("orders", "order", "claim_order", settings.reconcile_order_stuck_after, _order),
        Phase("refunds", "refund", "claim_refund", settings.reconcile_refund_stuck_after, _refund),
        Phase(
            "orphan_refunds", "refund", "claim_orphan_refund", settings.reconcile_refund_orphan_after, _orphan
        ),
        Phase(
            "invoice_refunds",
            "refund",
            "claim_invoice_refund",
            settings.reconcile_refund_stuck_after,
            _refund,
        ),
        Phase(
            "subscriptions", "invoice", "claim_invoice", settings.reconcile_subscription_stuck_after, _invoice
        ),
        Phase("payouts", "payout", "claim_payout", settings.reconcile_payout_stuck_after, _payout),
    ]
    counts = {phase.name: _phase(context, phase, due_before) for phase in phases}
    counts["disputes"] = _disputes(context)
    log.info("reconcile tick %s", " ".join(f"{name}={dict(phase)}" for name, phase in counts.items()))
    return counts


def _phase(context: Context, phase: Phase, due_before: datetime) -> dict[str, Any]:
    """Up to RECONCILE_BATCH_SIZE rows, each claimed, asked about and settled in its own transaction.

    A row is tried once per tick. A PSP read error rolls its row back (no cool-down: a manual
    tick right after retries it); three in a row stop the phase. A "no such object" answer is
    acted on only when the canary shows the PSP can see our objects.
    """
    conn = context.conn
    counts: Counter[str] = Counter()
    tried: list[uuid.UUID] = []
    read_errors = 0
    misconfigured_logged = False
    for _ in range(context.settings.reconcile_batch_size):
        stuck: Stuck | None = None
        try:
            with conn.transaction(), conn.cursor(row_factory=class_row(Stuck)) as cur:
                params = {"stuck_after": phase.stuck_after, "due_before": due_before, "tried": tried}
                stuck = cur.execute(QUERIES[phase.claim], params).fetchone()
                if stuck is None:
                    break
                tried.append(stuck.id)
                if not _begin_check(conn, phase.kind, stuck, due_before):
                    continue  # another tick checked it meanwhile
                outcome = phase.settle(context, stuck)
                if outcome.action == "psp_error":
                    raise _ReadError(outcome.psp_status or "")
                _record_answer(conn, phase.kind, stuck, outcome)
        except _ReadError:
            counts["psp_error"] += 1
            metrics.reconcile_action(phase.name, "psp_error")
            read_errors += 1
            if read_errors >= STOP_AFTER_READ_ERRORS:
                log.warning(
                    "reconcile phase=%s stopped early: %d PSP read errors in a row", phase.name, read_errors
                )
                return {"checked": sum(counts.values()), **counts, "stopped_early": True}
            continue
        except PspMisconfigured:
            counts["psp_misconfigured"] += 1
            metrics.reconcile_action(phase.name, "psp_misconfigured")
            if not misconfigured_logged:
                misconfigured_logged = True
                log.error(
                    "reconcile phase=%s changed nothing: the payment provider finds none of our objects,"
                    " not even a paid one; check HYPERSWITCH_URL and HYPERSWITCH_API_KEY",
                    phase.name,
                )
            continue
        except Exception:  # one bad row must not stop the tick; it is rolled back and counted
            log.exception("reconcile phase=%s: a row failed and was rolled back", phase.name)
            counts["errors"] += 1
            if stuck is not None:
                _record_failure(conn, phase, stuck)
            continue
        read_errors = 0
        counts[outcome.action] += 1
        metrics.reconcile_action(phase.name, outcome.action)
        _log(phase.name, stuck, outcome)
    return {"checked": sum(counts.values()), **counts}


def _record_failure(conn: db.Connection, phase: Phase, stuck: Stuck) -> None:
    """Our own code raised on this row: after a few times the reconciler leaves it to a human."""
    params = {"kind": phase.kind, "row_id": stuck.id, "give_up_after": GIVE_UP_AFTER_FAILURES}
    with conn.transaction():
        row = conn.execute(QUERIES["record_failure"], params).fetchone()
        if row is not None and row[0] == GIVE_UP_AFTER_FAILURES:
            log.error(
                "reconcile needs a human: phase=%s id=%s psp_id=%s raised %d times; no longer retried",
                phase.name,
                stuck.id,
                stuck.psp_id,
                GIVE_UP_AFTER_FAILURES,
            )
            detail = (
                f"the reconciler's {phase.name} phase raised {GIVE_UP_AFTER_FAILURES} times on {phase.kind}"
                f" {stuck.id} ({stuck.psp_id}) and no longer retries it; the worker log has the traceback"
            )
            _needs_a_human(conn, discrepancies.Kind.RECONCILE_GAVE_UP, phase.kind, stuck, detail)


def _begin_check(conn: db.Connection, kind: str, stuck: Stuck, due_before: datetime) -> bool:
    params = {"kind": kind, "row_id": stuck.id, "due_before": due_before}
    return conn.execute(QUERIES["begin_check"], params).fetchone() is not None


def _record_answer(conn: db.Connection, kind: str, stuck: Stuck, outcome: Outcome) -> int:
    """A settled row's state is deleted (nothing to remember); a synthetic delivery that ended
    `error:` is not synthesized again: the row waits for a human."""
    if outcome.action in ("settled", "cancelled"):
        forgotten = conn.execute(QUERIES["forget_row"], {"kind": kind, "row_id": stuck.id}).fetchone()
        if forgotten is not None and forgotten[0] >= NEEDS_A_HUMAN_AFTER:
            note = f"the PSP's answer settled it ({outcome.psp_status}): {outcome.result}"
            discrepancies.close(
                conn, discrepancies.Kind.RECONCILE_STILL_PENDING, note, **_row_names(kind, stuck)
            )
        return 0
    params = {
        "kind": kind,
        "row_id": stuck.id,
        "answered": outcome.answered,
        "psp_status": outcome.psp_status,
        "give_up": bool(outcome.result and outcome.result.startswith("error:")),
    }
    row = conn.execute(QUERIES["record_answer"], params).fetchone()
    checks = int(row[0]) if row else 0
    if params["give_up"]:  # apply_synthetic opened its discrepancy, in this transaction
        log.error(
            "reconcile needs a human: %s %s: the PSP's answer ended %r; no longer synthesized",
            kind,
            stuck.id,
            outcome.result,
        )
    elif outcome.still_stuck and checks == NEEDS_A_HUMAN_AFTER:
        log.warning(
            "reconcile needs a human: %s id=%s psp_id=%s psp_status=%s checks=%d stuck_for_s=%d",
            kind,
            stuck.id,
            stuck.psp_id,
            outcome.psp_status,
            checks,
            stuck.stuck_for.total_seconds(),
        )
        detail = (
            f"{kind} {stuck.id} ({stuck.psp_id}) is still {outcome.psp_status} at the payment provider"
            f" after {checks} checks over {stuck.stuck_for}"
        )
        _needs_a_human(conn, discrepancies.Kind.RECONCILE_STILL_PENDING, kind, stuck, detail)
    return checks


def _row_names(kind: str, stuck: Stuck) -> discrepancies.Objects:
    """The discrepancy column that names a reconcile_state row's object."""
    if kind == "order":
        return {"order_id": stuck.id}
    if kind == "invoice":
        return {"invoice_id": stuck.id}
    if kind == "refund":
        return {"refund_id": stuck.id}
    return {"payout_id": stuck.id}


def _needs_a_human(
    conn: db.Connection, what: discrepancies.Kind, kind: str, stuck: Stuck, detail: str
) -> None:
    discrepancies.open_one(conn, what, detail, subject=stuck.psp_id, **_row_names(kind, stuck))


def _log(phase: str, stuck: Stuck, outcome: Outcome) -> None:
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


def _synthetic(context: Context, event_type: str, content_type: str, obj: dict[str, Any]) -> Outcome:
    """Feed the PSP's answer through the webhook handlers, recorded like a delivery."""
    log_id, result = webhooks.apply_synthetic(context.conn, context.settings, event_type, content_type, obj)
    action = "settled" if result == "ok" else "unchanged"
    return Outcome(action, str(obj.get("status")), result, log_id)


def _fetch(
    context: Context, get: Callable[[str], dict[str, Any]], psp_id: str, id_field: str
) -> dict[str, Any] | None:
    """The PSP's object; a stand-in with status `not_found` when it has none (and the canary shows
    it can see our objects: else PspMisconfigured); None on a read error."""
    try:
        return get(psp_id)
    except errors.HyperswitchNotFound:
        if not context.canary.sees_us():
            raise PspMisconfigured(psp_id) from None
        return {id_field: psp_id, "status": "not_found"}
    except errors.HyperswitchError as exc:  # unavailable, or an answer we cannot act on (401, 400)
        log.warning("reconcile: reading %s failed: %s", psp_id, exc)
        return None


# -- the phases -------------------------------------------------------------------------------------


def _order(context: Context, stuck: Stuck) -> Outcome:
    """A pending order: the PSP's payment decides; none at all means no money was taken. One
    still not final after RECONCILE_PAYMENT_EXPIRES_AFTER is cancelled at the PSP: the order fails."""
    payment = _fetch(context, context.client.get_payment, stuck.psp_id, "payment_id")
    if payment is None:
        return Outcome("psp_error")
    status = str(payment.get("status"))
    event_type = PAYMENT_EVENTS.get(status)
    if event_type is not None:
        return _synthetic(context, event_type, "payment_details", payment)
    if stuck.stuck_for < context.settings.reconcile_payment_expires_after:
        return Outcome("unchanged", status)
    final = _cancel_payment(context, stuck.psp_id, "payment not completed in time")
    if final is None:
        return Outcome("psp_error", status)
    log.warning(
        "reconcile: order %s payment %s not final after %s: cancelled",
        stuck.id,
        stuck.psp_id,
        stuck.stuck_for,
    )
    outcome = _synthetic(context, PAYMENT_EVENTS[str(final["status"])], "payment_details", final)
    return replace(outcome, action="cancelled") if outcome.action == "settled" else outcome


def _cancel_payment(context: Context, payment_id: str, reason: str) -> dict[str, Any] | None:
    """Cancel a payment that is not final; the PSP's final object (cancelled, or what it became
    when the cancel is refused because it is final already), or None when it cannot tell."""
    try:
        cancelled = context.client.cancel_or_read(payment_id, reason)
    except errors.HyperswitchError as exc:
        log.warning("reconcile: cancelling %s failed: %s", payment_id, exc)
        return None
    return cancelled if str(cancelled.get("status")) in PAYMENT_EVENTS else None


def _refund(context: Context, stuck: Stuck) -> Outcome:
    """A submitted refund with no final webhook: the PSP's status, with its error message."""
    refund = _fetch(context, context.client.get_refund, stuck.psp_id, "refund_id")
    if refund is None:
        return Outcome("psp_error")
    status = str(refund.get("status"))
    if status not in REFUND_EVENTS:
        if status == "not_found":
            log.error("reconcile: submitted refund %s is unknown to the payment provider", stuck.psp_id)
        return Outcome("unchanged", status)
    return _synthetic(context, REFUND_EVENTS[status], "refund_details", refund)


def _orphan(context: Context, stuck: Stuck) -> Outcome:
    """A refund phase 2 never confirmed. Unknown to the PSP → failed; known → adopt its status."""
    refund = _fetch(context, context.client.get_refund, stuck.psp_id, "refund_id")
    if refund is None:
        return Outcome("psp_error")
    status = str(refund.get("status"))
    if status == "not_found":
        log.error(
            "reconcile: refund %s never reached the payment provider: failed, order reopened", stuck.psp_id
        )
        failed = {**refund, "status": "failed", "error_message": "refund never reached the payment provider"}
        return _synthetic(context, "refund_failed", "refund_details", failed)
    refunds.mark_submitted(context.conn, stuck.id)  # from now on an ordinary refund
    if status not in REFUND_EVENTS:
        return Outcome("adopted", status)
    return _synthetic(context, REFUND_EVENTS[status], "refund_details", refund)


def _invoice(context: Context, stuck: Stuck) -> Outcome:
    """A pending invoice: the PSP's payment decides. One the PSP never got is sent (same payment_id);
    one that is not final is cancelled at the PSP when nobody can or will pay it any more; an
    unpaid one gives its missing client_secret."""
    conn, client = context.conn, context.client
    payment = _fetch(context, client.get_payment, stuck.psp_id, "payment_id")
    if payment is None:
        return Outcome("psp_error")
    invoice = invoices.lock(conn, stuck.id)
    assert invoice is not None
    subscription = model.lock(conn, invoice.subscription_id)
    assert subscription is not None
    status = str(payment.get("status"))
    # Our create never reached it: sent now, unless the subscription is over (then it fails below).
    if status == "not_found" and invoice.submitted_at is None and subscription.status not in model.ENDED:
        return _resend_invoice(client, conn, invoice, status)
    event_type = PAYMENT_EVENTS.get(status)
    if event_type is not None:
        return _synthetic(context, event_type, "payment_details", payment)
    reason = _abandon_reason(subscription, invoice, status, stuck.stuck_for, context.settings)
    if reason is not None:
        result = invoices.abandon(conn, client, subscription, invoice, reason)
        log.info(
            "reconcile: invoice %s payment %s abandoned (%s): %s", invoice.id, stuck.psp_id, reason, result
        )
        return Outcome("cancelled" if result is not None else "psp_error", status, result)
    if invoice.client_secret is None and payment.get("client_secret"):
        invoices.store_client_secret(conn, invoice, payment["client_secret"])
        return Outcome("client_secret_stored", status)
    return Outcome("unchanged", status)


def _resend_invoice(
    client: hyperswitch.Client, conn: db.Connection, invoice: invoices.Invoice, status: str
) -> Outcome:
    try:
        sent = invoices.send(conn, client, invoice.id)
    except errors.PaymentProviderMisconfigured:  # logged where it was refused
        return Outcome("psp_error", status)
    return Outcome("resent" if sent.submitted_at is not None else "psp_error", status)


def _abandon_reason(
    subscription: model.Subscription,
    invoice: invoices.Invoice,
    psp_status: str,
    age: timedelta,
    settings: Settings,
) -> str | None:
    """Why a payment that is not final should be cancelled now, or None to keep waiting."""
    if subscription.status in model.ENDED:
        return f"subscription {subscription.status}"
    if invoice.off_session and psp_status == "requires_customer_action":
        return "authentication required off-session"
    if age >= settings.subscription_payment_expires_after:
        return "payment not completed in time"
    return None


# -- payouts ---------------------------------------------------------------------------------------


def _payout(context: Context, stuck: Stuck) -> Outcome:
    """A pending payout: the PSP's payout decides. One the PSP never answered for is looked up by
    its merchant reference before it is ever sent again."""
    payout = payouts.lock(context.conn, stuck.id)
    assert payout is not None
    if payout.hyperswitch_payout_id is None:
        return _unsubmitted_payout(context, payout)
    found = _fetch(context, context.client.get_payout, payout.hyperswitch_payout_id, "payout_id")
    if found is None:
        return Outcome("psp_error")
    status = str(found.get("status"))
    if status == "not_found":
        payouts.unknown_to_psp(context.conn, payout)
        return Outcome("unchanged", status)
    if payouts.is_final(status):
        return _synthetic(context, payouts.event_type(status), payouts.CONTENT_TYPE, found)
    payouts.adopt(context.conn, payout, found)
    return Outcome("unchanged", status)


def _unsubmitted_payout(context: Context, payout: payouts.Payout) -> Outcome:
    """Found at the PSP by our reference: adopted (its status applied when final). Not found, and
    the canary shows the PSP sees our objects: sent now, with the same reference."""
    try:
        found = context.client.list_payouts(payout.merchant_reference)
    except errors.HyperswitchError as exc:
        log.warning("reconcile: listing payouts for %s failed: %s", payout.merchant_reference, exc)
        return Outcome("psp_error")
    if len(found) > 1:
        payouts.duplicated_at_psp(context.conn, payout, found)
        return Outcome("unchanged", "duplicated")
    if found:
        status = str(found[0].get("status"))
        if payouts.is_final(status):
            return _synthetic(context, payouts.event_type(status), payouts.CONTENT_TYPE, found[0])
        payouts.adopt(context.conn, payout, found[0])
        return Outcome("adopted", status)
    if not context.canary.sees_us():
        raise PspMisconfigured(payout.merchant_reference)
    sent = payouts.send(context.conn, context.client, payout)
    log.info("reconcile: payout %s was never received by the payment provider: sent, %s", payout.id, sent)
    if sent == "rejected":
        return Outcome("settled", "not_found")
    return Outcome("resent" if sent == "submitted" else "psp_error", "not_found")


# -- disputes ---------------------------------------------------------------------------------------


def _disputes(context: Context) -> dict[str, Any]:
    """Lost dispute webhooks: the PSP's dispute list, then a GET for each open dispute of ours the
    list did not show (oldest first). A dispute unknown to us, or the PSP's at a higher rank than
    ours, is applied as a synthetic delivery, like every other phase."""
    counts: Counter[str] = Counter()
    try:
        listed = context.client.list_disputes(limit=100)
    except errors.HyperswitchError as exc:
        log.warning("reconcile phase=disputes: listing failed: %s", exc)
        return {"checked": 0, "psp_error": 1, "stopped_early": True}
    seen = {str(d.get("dispute_id")): d for d in listed}
    with context.conn.transaction():
        ours = disputes.known_statuses(context.conn, list(seen))
        still_open = disputes.oldest_open(context.conn, context.settings.reconcile_batch_size)
    candidates = [(d, ours.get(dispute_id)) for dispute_id, d in seen.items()]
    looked_at = [dispute_id for dispute_id in still_open if dispute_id in seen]
    read_errors = 0
    for dispute_id in still_open:
        if dispute_id in seen:
            continue
        try:
            candidates.append(
                (context.client.get_dispute(dispute_id), ours.get(dispute_id, disputes.Status.OPENED))
            )
            looked_at.append(dispute_id)
            read_errors = 0
        except errors.HyperswitchError as exc:
            log.warning("reconcile phase=disputes: reading %s failed: %s", dispute_id, exc)
            counts["psp_error"] += 1
            read_errors += 1
            if read_errors >= STOP_AFTER_READ_ERRORS:
                counts["stopped_early"] = True
                break
    with context.conn.transaction():  # every open dispute gets its turn within a bounded number of ticks
        disputes.mark_checked(context.conn, looked_at)
    for psp, our_status in candidates:
        action = _dispute(context, psp, our_status)
        counts[action] += 1
        metrics.reconcile_action("disputes", action)
    disputes.warn_deadlines(context.conn)
    stopped = counts.pop("stopped_early", 0)
    out: dict[str, Any] = {"checked": sum(counts.values()), **counts}
    return {**out, "stopped_early": True} if stopped else out


def _dispute(context: Context, psp: dict[str, Any], our_status: str | None) -> str:
    status = str(psp.get("dispute_status"))
    if status not in disputes.RANK:
        return "unchanged"
    if our_status is not None and disputes.RANK[status] <= disputes.RANK.get(our_status, 0):
        return "unchanged"
    try:
        with context.conn.transaction():
            log_id, result = webhooks.apply_synthetic(
                context.conn, context.settings, status, "dispute_details", psp
            )
    except Exception:
        log.exception(
            "reconcile phase=disputes: dispute %s failed and was rolled back", psp.get("dispute_id")
        )
        return "errors"
    log.info(
        "reconcile phase=disputes id=%s action=%s psp_status=%s result=%r log_id=%s",
        psp.get("dispute_id"),
        "settled" if result == "ok" else "unchanged",
        status,
        result,
        log_id,
    )
    return "settled" if result == "ok" else "unchanged"
