"""What a billing period is, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from veza_worker.subscriptions import periods


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "interval", "end"),
    [
        ("2026-03-14 10:21:07", "month", "2026-04-14 10:21:07"),
        ("2026-12-31 23:59:59", "month", "2027-01-31 23:59:59"),
        ("2026-01-31 08:00:00", "month", "2026-02-28 08:00:00"),  # the month's last day
        ("2028-01-31 08:00:00", "month", "2028-02-29 08:00:00"),  # a leap year's
        ("2026-03-14 10:21:07", "year", "2027-03-14 10:21:07"),
        ("2028-02-29 12:00:00", "year", "2029-02-28 12:00:00"),
    ],
)
def test_a_period_is_one_interval_with_the_day_clamped_to_the_month(
    start: str, interval: str, end: str
) -> None:
    assert periods.starting(at(start), interval) == periods.Period(at(start), at(end))


def test_any_interval_but_a_year_is_a_month() -> None:
    assert periods.starting(at("2026-05-01 00:00:00"), "week").end == at("2026-06-01 00:00:00")


def test_months_are_counted_in_utc_whatever_the_offset_of_the_start() -> None:
    paris = timezone(timedelta(hours=1))
    start = datetime(2026, 2, 1, 0, 30, tzinfo=paris)  # still January 31 in UTC

    assert periods.add_months(start, 1) == at("2026-02-28 23:30:00")


def test_a_renewal_period_is_covered_only_by_a_subscription_running_to_its_end_or_later() -> None:
    end = at("2026-05-01 00:00:00")

    assert periods.covers(end, end)
    assert periods.covers(end + timedelta(days=30), end)
    assert not periods.covers(end - timedelta(seconds=1), end)
    assert not periods.covers(None, end)
    assert not periods.covers(end, None)
