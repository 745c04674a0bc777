"""periods.py adds months as the SQL it replaced did: Postgres's timestamptz + interval, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from veza_worker.subscriptions import periods

STARTS = [
    datetime(2026, 1, 31, 8, 0, tzinfo=UTC),
    datetime(2026, 3, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2027, 12, 31, 12, 0, tzinfo=UTC),
    datetime(2028, 2, 29, 0, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    *(datetime(2026, 1, 1, 6, 15, tzinfo=UTC) + timedelta(days=d) for d in range(0, 365, 11)),
]


def test_month_and_year_periods_end_where_postgres_says(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TIME ZONE 'UTC'")
    for start in STARTS:
        month, year = conn.execute(
            "SELECT %(t)s::timestamptz + interval '1 month', %(t)s::timestamptz + interval '1 year'",
            {"t": start},
        ).fetchone() or (None, None)

        assert periods.starting(start, "month").end == month, start
        assert periods.starting(start, "year").end == year, start
