"""The feature gate's answer, decided without a database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from veza_worker.subscriptions import gate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=3)
USER = uuid.UUID(int=1)
PAID_ACTIVE = gate.GateRow(
    id=uuid.UUID(int=2),
    user_id=USER,
    plan_id=uuid.UUID(int=3),
    status="active",
    trial_ends_at=None,
    current_period_end=NOW + timedelta(days=10),
    cancel_at_period_end=False,
    free=False,
    has_paid_invoice=True,
)


def test_a_user_without_a_subscription_is_refused() -> None:
    assert gate.answer(USER, None, NOW, GRACE) == {
        "user_id": str(USER),
        "allowed": False,
        "reason": "no subscription",
        "status": None,
    }


def test_a_paid_active_subscription_in_its_period_grants_and_says_until_when() -> None:
    assert gate.answer(USER, PAID_ACTIVE, NOW, GRACE) == {
        "user_id": str(USER),
        "allowed": True,
        "status": "active",
        "subscription_id": str(PAID_ACTIVE.id),
        "plan_id": str(PAID_ACTIVE.plan_id),
        "current_period_end": PAID_ACTIVE.current_period_end,
    }


def test_a_paid_active_subscription_grants_through_the_grace_and_not_a_moment_more() -> None:
    ended = replace(PAID_ACTIVE, current_period_end=NOW - GRACE + timedelta(seconds=1))

    assert gate.denial(ended, NOW, GRACE) is None
    assert (
        gate.denial(replace(ended, current_period_end=NOW - GRACE), NOW, GRACE) == "renewal payment pending"
    )
    assert gate.denial(replace(ended, current_period_end=None), NOW, GRACE) == "renewal payment pending"


def test_a_paid_active_subscription_without_a_paid_invoice_is_refused() -> None:
    assert gate.denial(replace(PAID_ACTIVE, has_paid_invoice=False), NOW, GRACE) == "no paid invoice"


def test_a_free_plan_grants_with_no_period_and_no_invoice() -> None:
    free = replace(PAID_ACTIVE, free=True, has_paid_invoice=False, current_period_end=None)

    assert gate.denial(free, NOW, GRACE) is None


def test_a_trial_grants_only_before_its_end() -> None:
    trial = replace(PAID_ACTIVE, status="trialing", trial_ends_at=NOW + timedelta(minutes=1))

    assert gate.answer(USER, trial, NOW, GRACE)["trial_ends_at"] == trial.trial_ends_at
    assert gate.denial(trial, NOW, GRACE) is None
    assert gate.denial(replace(trial, trial_ends_at=NOW), NOW, GRACE) == "trial ended"
    assert gate.denial(replace(trial, trial_ends_at=None), NOW, GRACE) == "trial ended"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("pending_payment", "complete payment"),
        ("past_due", "renewal payment failed: complete payment"),
        ("expired", "subscription expired"),
        ("canceled", "subscription canceled"),
    ],
)
def test_every_other_status_is_refused_with_its_reason(status: str, reason: str) -> None:
    out = gate.answer(USER, replace(PAID_ACTIVE, status=status), NOW, GRACE)

    assert (out["allowed"], out["reason"], out["status"]) == (False, reason, status)
    assert "current_period_end" not in out


def test_a_cancel_at_period_end_is_shown_while_access_lasts() -> None:
    out = gate.answer(USER, replace(PAID_ACTIVE, cancel_at_period_end=True), NOW, GRACE)

    assert out["allowed"] is True and out["cancel_at_period_end"] is True
