"""The feature gate (`subscription-status`): whether a user's subscription grants features.

Defence in depth: the status, and the dates, and the payment, must all agree. trialing grants
only before trial_ends_at; a paid plan's active grants only with a paid invoice and before
current_period_end + grace; a free plan's active always. A stalled clock (no sweep moving rows)
therefore gives a paid plan away for at most the grace. The decision is `answer`, a pure function.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from veza_worker import db
from veza_worker.subscriptions import model

QUERIES = db.load_queries(__name__)


@dataclass(frozen=True)
class GateRow:
    """The user's live subscription, else their most recent one, with what the gate checks."""

    id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID
    status: str  # a model.Status
    trial_ends_at: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    free: bool
    has_paid_invoice: bool
    pending_plan_id: uuid.UUID | None = None  # the plan the next renewal switches to


_DENIED = {
    model.Status.PENDING_PAYMENT: "complete payment",
    model.Status.PAST_DUE: "renewal payment failed: complete payment",
    model.Status.EXPIRED: "subscription expired",
    model.Status.CANCELED: "subscription canceled",
}


def status(conn: db.Connection, user_id: uuid.UUID, grace: timedelta = timedelta(days=3)) -> dict[str, Any]:
    """The gate's answer for a user, now."""
    with conn.transaction():
        gate = db.one(conn, GateRow, QUERIES["latest_subscription"], {"user_id": user_id})
    return answer(user_id, gate, datetime.now(UTC), grace)


def answer(user_id: uuid.UUID, gate: GateRow | None, now: datetime, grace: timedelta) -> dict[str, Any]:
    """`{user_id, allowed, status, …}`: what `subscription-status` prints for this row at `now`."""
    if gate is None:
        return {"user_id": str(user_id), "allowed": False, "reason": "no subscription", "status": None}
    reason = denial(gate, now, grace)
    out: dict[str, Any] = {
        "user_id": str(user_id),
        "allowed": reason is None,
        "status": gate.status,
        "subscription_id": str(gate.id),
        "plan_id": str(gate.plan_id),
    }
    if gate.status == model.Status.TRIALING:
        out["trial_ends_at"] = gate.trial_ends_at
    elif gate.status == model.Status.ACTIVE:
        out["current_period_end"] = gate.current_period_end
    if gate.pending_plan_id is not None:
        out["pending_plan_id"] = str(gate.pending_plan_id)
    if gate.cancel_at_period_end:
        out["cancel_at_period_end"] = True
    if reason is not None:
        out["reason"] = reason
    return out


def denial(gate: GateRow, now: datetime, grace: timedelta) -> str | None:
    """Why the gate refuses, or None when it grants."""
    if gate.status == model.Status.TRIALING:
        return None if gate.trial_ends_at and gate.trial_ends_at > now else "trial ended"
    if gate.status != model.Status.ACTIVE:
        return _DENIED[model.Status(gate.status)]
    if gate.free:
        return None
    if not gate.has_paid_invoice:
        return "no paid invoice"
    if gate.current_period_end is None or gate.current_period_end + grace <= now:
        return "renewal payment pending"
    return None
