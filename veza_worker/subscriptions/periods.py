"""What a billing period is: pure arithmetic, no database.

A period is [start, end): one plan interval from its start. A renewal's period starts where the
previous one ended (no drift, however late the sweep or the webhook); a first payment's starts
when it is paid.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime

YEAR = "year"  # subscription_plans.interval: 'month' or 'year'


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


def starting(start: datetime, interval: str) -> Period:
    """The period of one `interval` ('year', anything else a month) from `start`."""
    return Period(start, add_months(start, 12 if interval == YEAR else 1))


def add_months(at: datetime, months: int) -> datetime:
    """`at` plus whole months, in UTC, as Postgres adds an interval: the time of day is kept and
    a day the month lacks becomes its last (Jan 31 + 1 month = Feb 28 or 29)."""
    utc = at.astimezone(UTC)
    year, month = divmod(utc.month - 1 + months, 12)
    year += utc.year
    month += 1
    day = min(utc.day, calendar.monthrange(year, month)[1])
    return utc.replace(year=year, month=month, day=day)


def covers(current_period_end: datetime | None, period_end: datetime | None) -> bool:
    """Whether a subscription running to `current_period_end` already covers a renewal period
    ending at `period_end` (another attempt paid for it first)."""
    if current_period_end is None or period_end is None:
        return False
    return period_end <= current_period_end
