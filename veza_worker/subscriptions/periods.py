"""What a billing period is: pure arithmetic, no database.

A period is [start, end): one plan interval from its start. A renewal's period starts where the
previous one ended (no drift, however late the sweep or the webhook); a first payment's starts
when it is paid. An upgrade inside a period owes `prorate` of the price difference.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


BIGINT_MAX = 2**63 - 1  # subscription_invoices.amount is a Postgres bigint
_MICROSECOND = timedelta(microseconds=1)


def prorate(old_amount: int, new_amount: int, period: Period, at: datetime) -> int:
    """What an upgrade from `old_amount` to `new_amount` owes for what is left of `period` at `at`:
    floor((new - old) * (end - at) / (end - start)), in minor units; 0 once the period is over.

    Integer microseconds, no floats: they are what Postgres and Python store, so the arithmetic is
    exact for the very timestamps the rows hold, and a preview and the charge computed at one
    instant agree. The product (up to 2^63 * 2^45) needs Python's unbounded ints: in SQL a bigint
    would overflow. The result never exceeds the difference, so it fits a bigint whenever both
    prices do; a price outside bigint is refused (ValueError).
    """
    for amount in (old_amount, new_amount):
        if not 0 <= amount <= BIGINT_MAX:
            raise ValueError(f"amount {amount} is outside 0..{BIGINT_MAX}")
    length = (period.end - period.start) // _MICROSECOND
    if length <= 0:
        raise ValueError(f"empty period {period.start.isoformat()} .. {period.end.isoformat()}")
    left = min(max((period.end - at) // _MICROSECOND, 0), length)
    return (new_amount - old_amount) * left // length
