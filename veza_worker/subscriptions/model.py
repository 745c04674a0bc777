"""The subscription and plan rows, and the subscription writes the other modules share."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from veza_worker import db, hyperswitch

QUERIES = db.load_queries(__name__)


class Status(StrEnum):
    """user_subscriptions.status. Only active and trialing can grant features (see gate.py)."""

    ACTIVE = "active"
    TRIALING = "trialing"
    PENDING_PAYMENT = "pending_payment"  # a first payment is awaited
    PAST_DUE = "past_due"  # a renewal payment failed: dunning
    EXPIRED = "expired"
    CANCELED = "canceled"


ENDED = (Status.EXPIRED, Status.CANCELED)  # final: nothing moves them again
AWAITING_PAYMENT = (Status.PENDING_PAYMENT, Status.PAST_DUE)  # the customer can pay on-session


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
    status: str  # a Status
    trial_ends_at: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    payment_method_id: str | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    past_due_since: datetime | None
    dunning_step: int
    pending_plan_id: uuid.UUID | None  # a plan change the next renewal applies (see plan_changes.py)

    @property
    def customer_id(self) -> str:
        return hyperswitch.merchant_id("cus", self.user_id)


def lock(conn: db.Connection, subscription_id: uuid.UUID) -> Subscription | None:
    return db.one(conn, Subscription, QUERIES["lock_subscription"], {"subscription_id": subscription_id})


def find_plan(conn: db.Connection, plan_id: uuid.UUID) -> Plan | None:
    return db.one(conn, Plan, QUERIES["get_plan"], {"plan_id": plan_id})


def get_plan(conn: db.Connection, plan_id: uuid.UUID) -> Plan:
    """The plan of a subscription, which references it."""
    plan = find_plan(conn, plan_id)
    assert plan is not None  # user_subscriptions.plan_id references it
    return plan


def set_status(conn: db.Connection, subscription_id: uuid.UUID, status: Status) -> None:
    conn.execute(QUERIES["set_status"], {"subscription_id": subscription_id, "status": status})


def set_past_due(conn: db.Connection, subscription_id: uuid.UUID) -> None:
    """A renewal payment failed, or there is no saved method to charge it: past_due, and dunning
    counts its steps from the period's first failure."""
    conn.execute(QUERIES["set_past_due"], {"subscription_id": subscription_id})


def switch_plan(conn: db.Connection, subscription_id: uuid.UUID, plan_id: uuid.UUID) -> None:
    """The plan in force is `plan_id` from now on; a pending change is spent."""
    conn.execute(QUERIES["switch_plan"], {"subscription_id": subscription_id, "plan_id": plan_id})


def set_pending_plan(conn: db.Connection, subscription_id: uuid.UUID, plan_id: uuid.UUID | None) -> None:
    """The plan the next renewal bills and switches to; None: the plan in force renews."""
    conn.execute(QUERIES["set_pending_plan"], {"subscription_id": subscription_id, "plan_id": plan_id})
