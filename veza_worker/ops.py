"""What ops see: the `status` document, and the gauges /metrics reads.

Every read here walks a partial index or a small table: its cost is what is stuck or waiting for
a human, not what the tables hold, so a scrape every 15 s is cheap at millions of rows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from veza_worker import audit, db, payouts, sweeps
from veza_worker.settings import Settings
from veza_worker.subscriptions import model

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)


def stuck(conn: db.Connection, settings: Settings) -> dict[str, int]:
    params = {
        "orders": settings.reconcile_order_stuck_after,
        "refunds": settings.reconcile_refund_stuck_after,
        "orphans": settings.reconcile_refund_orphan_after,
        "subscriptions": settings.reconcile_subscription_stuck_after,
        "payouts": settings.reconcile_payout_stuck_after,
    }
    return {phase: count for phase, count in conn.execute(QUERIES["stuck"], params).fetchall()}


def subscriptions_by_status(conn: db.Connection) -> dict[str, int]:
    found = dict(conn.execute(QUERIES["subscriptions_by_status"]).fetchall())
    return {str(status): found.get(status, 0) for status in model.Status}


def gauges(conn: db.Connection, settings: Settings) -> dict[str, Any]:
    """The numbers /metrics exposes as gauges, read in one short transaction."""
    with conn.transaction():
        outbox = conn.execute(QUERIES["outbox"]).fetchone()
        human = conn.execute(QUERIES["needs_a_human_count"], {}).fetchone()
        disputes = conn.execute(QUERIES["disputes_open"]).fetchone()
        assert outbox is not None and human is not None and disputes is not None
        return {
            "outbox_queued": outbox[0],
            "outbox_oldest_queued_seconds": outbox[1],
            "stuck": stuck(conn, settings),
            "needs_human": human[0],
            "subscriptions": subscriptions_by_status(conn),
            "disputes_open": disputes[0],
            "dispute_nearest_deadline": disputes[1],
            "ledger_violations": audit.last_violations(conn),
            "payouts": payouts.gauges(conn),
            **sweeps.gauges(conn, settings),
        }


def status(conn: db.Connection, settings: Settings) -> tuple[dict[str, Any], bool]:
    """The document an on-call engineer reads first, and whether all is well (no sweep overdue,
    nothing waiting for a human)."""
    now = datetime.now(UTC)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        human = cur.execute(QUERIES["needs_a_human"], {}).fetchall()
    with conn.transaction():
        outbox = conn.execute(QUERIES["outbox"]).fetchone()
        results = conn.execute(QUERIES["results_last_hour"], {}).fetchone()
        disputes = conn.execute(QUERIES["disputes_open"]).fetchone()
        assert outbox is not None and results is not None and disputes is not None
        schedule = sweeps.status(conn, settings, now)
        document: dict[str, Any] = {
            "outbox": {"queued": outbox[0], "oldest_queued_seconds": round(outbox[1], 1)},
            "results_last_hour": dict(zip(("ok", "skipped", "error"), results, strict=True)),
            "stuck": stuck(conn, settings),
            "needs_a_human": human,
            "subscriptions": subscriptions_by_status(conn),
            "disputes": {"open": disputes[0], "nearest_deadline": disputes[1]},
            "ledger": audit.last_state(conn),
            "payouts": payouts.status(conn),
            **schedule,
        }
    healthy = not human and not any(s["overdue"] for s in schedule["sweeps"].values())
    return document, healthy
