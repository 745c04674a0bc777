"""The proration arithmetic, without a database: integer microseconds, floor, bigint-safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from veza_worker.subscriptions import periods

US = timedelta(microseconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def month_from(start: str) -> periods.Period:
    return periods.starting(at(start), "month")


@pytest.mark.parametrize(
    ("start", "days"),
    [
        ("2026-02-01 00:00:00", 28),
        ("2028-02-01 00:00:00", 29),  # a leap February
        ("2026-04-01 00:00:00", 30),
        ("2026-01-01 00:00:00", 31),
    ],
)
def test_half_a_period_of_any_length_owes_half_the_difference(start: str, days: int) -> None:
    period = month_from(start)
    assert period.end - period.start == timedelta(days=days)
    middle = period.start + (period.end - period.start) / 2

    assert periods.prorate(1000, 3000, period, middle) == 1000
    assert periods.prorate(1000, 3001, period, middle) == 1000  # 1000.5: floored


@pytest.mark.parametrize("days", [28, 29, 30, 31])
def test_one_day_left_owes_the_difference_over_the_period_length_floored(days: int) -> None:
    start = at("2026-01-01 00:00:00")
    period = periods.Period(start, start + timedelta(days=days))

    assert periods.prorate(0, 10_000, period, period.end - timedelta(days=1)) == 10_000 // days


def test_the_exact_amount_at_a_known_point_of_a_known_period() -> None:
    period = month_from("2026-03-01 00:00:00")  # 31 days
    ten_days_in = at("2026-03-11 00:00:00")

    # (2999 - 999) * 21 days / 31 days = 1354.83...
    assert periods.prorate(999, 2999, period, ten_days_in) == 1354


def test_the_last_second_and_the_last_microsecond_of_a_period() -> None:
    period = month_from("2026-01-01 00:00:00")  # 31 days = 2_678_400 s
    last_second = period.end - timedelta(seconds=1)

    assert periods.prorate(0, 2_678_400, period, last_second) == 1  # exactly one second's worth
    assert periods.prorate(0, 2_678_399, period, last_second) == 0  # a hair less: floored to nothing
    assert periods.prorate(0, 2_678_400_000_000, period, period.end - US) == 1  # one microsecond's worth
    assert periods.prorate(1, 2, period, period.end - US) == 0


def test_nothing_is_owed_once_the_period_is_over_and_the_whole_difference_at_its_start() -> None:
    period = month_from("2026-01-01 00:00:00")

    assert periods.prorate(100, 900, period, period.end) == 0
    assert periods.prorate(100, 900, period, period.end + timedelta(days=3)) == 0
    assert periods.prorate(100, 900, period, period.start) == 800
    assert periods.prorate(100, 900, period, period.start - timedelta(days=3)) == 800  # never more


def test_microseconds_count_not_only_seconds() -> None:
    start = at("2026-01-01 00:00:00")
    period = periods.Period(start, start + timedelta(seconds=2))

    assert periods.prorate(0, 2_000_000, period, start + timedelta(microseconds=1)) == 1_999_999


def test_amounts_near_the_bigint_limit_stay_exact_and_fit_a_bigint() -> None:
    period = month_from("2026-01-01 00:00:00")
    biggest = periods.BIGINT_MAX

    assert periods.prorate(0, biggest, period, period.start) == biggest
    assert periods.prorate(0, biggest, period, period.end - US) == biggest // (31 * 86_400 * 10**6)
    middle = period.start + timedelta(days=15, hours=12)
    assert periods.prorate(1, biggest, period, middle) == (biggest - 1) // 2
    # A float would have lost the last digits: 2^63 - 1 is not a double.
    assert periods.prorate(0, biggest, period, middle) != int(biggest * 0.5)


@pytest.mark.parametrize(("old", "new"), [(0, 2**63), (2**63, 2**63 + 5), (-1, 100)])
def test_an_amount_a_bigint_cannot_hold_is_refused(old: int, new: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        periods.prorate(old, new, month_from("2026-01-01 00:00:00"), at("2026-01-10 00:00:00"))


def test_an_empty_period_is_refused() -> None:
    start = at("2026-01-01 00:00:00")
    with pytest.raises(ValueError, match="empty period"):
        periods.prorate(0, 100, periods.Period(start, start), start)
