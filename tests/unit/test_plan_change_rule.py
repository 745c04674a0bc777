"""What a plan change does, decided without a database (plan_changes.decide)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from veza_worker.subscriptions import model, plan_changes
from veza_worker.subscriptions.plan_changes import Action, Change

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)  # 31 days
NOW = datetime(2026, 3, 11, tzinfo=UTC)  # 21 days left


def plan(amount: int, interval: str = "month", currency: str = "EUR") -> model.Plan:
    return model.Plan(uuid.uuid4(), f"plan {amount}", amount, currency, interval, 0)


BASIC = plan(999)
ACTIVE = model.Subscription(
    id=uuid.UUID(int=1),
    user_id=uuid.UUID(int=2),
    plan_id=BASIC.id,
    status="active",
    trial_ends_at=None,
    current_period_start=START,
    current_period_end=END,
    payment_method_id="pm_1",
    cancel_at_period_end=False,
    canceled_at=None,
    past_due_since=None,
    dunning_step=0,
    pending_plan_id=None,
)


def test_an_upgrade_inside_the_period_owes_the_prorated_difference() -> None:
    assert plan_changes.decide(ACTIVE, BASIC, plan(2999), NOW) == Change(Action.PRORATE, 1354)


@pytest.mark.parametrize(
    "new",
    [plan(499), plan(9999, interval="year"), plan(2999, currency="USD"), plan(0)],
    ids=["cheaper", "another interval", "another currency", "free"],
)
def test_what_is_not_an_upgrade_waits_for_the_period_end(new: model.Plan) -> None:
    change = plan_changes.decide(ACTIVE, BASIC, new, NOW)
    assert change == Change(Action.AT_PERIOD_END) and change.effective == "period_end"


def test_an_upgrade_asked_once_the_period_has_ended_waits_for_the_renewal() -> None:
    assert plan_changes.decide(ACTIVE, BASIC, plan(2999), END) == Change(Action.AT_PERIOD_END)
    assert plan_changes.decide(ACTIVE, BASIC, plan(2999), END + timedelta(hours=1)).amount_due == 0


def test_nothing_owed_switches_at_once() -> None:
    assert plan_changes.decide(ACTIVE, BASIC, plan(999), NOW) == Change(Action.SWITCH)  # the same price
    last = END - timedelta(microseconds=1)
    assert plan_changes.decide(ACTIVE, BASIC, plan(1000), last) == Change(Action.SWITCH)


def test_the_plan_in_force_clears_a_pending_change() -> None:
    pending = replace(ACTIVE, pending_plan_id=uuid.uuid4())
    assert plan_changes.decide(pending, BASIC, BASIC, NOW) == Change(Action.CLEAR)


def test_a_trial_switches_at_once_for_nothing() -> None:
    trialing = replace(ACTIVE, status="trialing", current_period_start=None, current_period_end=None)
    for new in (plan(2999), plan(0), plan(9999, interval="year")):
        assert plan_changes.decide(trialing, BASIC, new, NOW) == Change(Action.SWITCH)


def test_a_free_plan_pays_the_full_price_of_a_paid_one_and_moves_freely_to_another_free_one() -> None:
    free = plan(0)
    on_free = replace(ACTIVE, plan_id=free.id, current_period_end=None)

    assert plan_changes.decide(on_free, free, plan(2999, interval="year"), NOW) == Change(Action.FIRST, 2999)
    assert plan_changes.decide(on_free, free, plan(0), NOW) == Change(Action.SWITCH)
