"""What ops see: each sweep's runs, the `status` document, and the gauges /metrics reads.

Every read here walks a partial index or a small table: its cost is what is stuck or waiting for
a human, not what the tables hold, so a scrape every 15 s is cheap at millions of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from veza_worker import db
from veza_worker.settings import Settings
from veza_worker.subscriptions import model

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

T = TypeVar("T")


def intervals(settings: Settings) -> dict[str, timedelta]:
    """How often the clock runs each sweep: one is overdue after twice its interval."""
    return {
        "reconcile": settings.reconcile_interval,
        "redrive": timedelta(minutes=1),
        "retention": timedelta(days=1),
        "trial_end": timedelta(minutes=5),
        "renew": timedelta(minutes=5),
    }


def run_sweep(conn: db.Connection, name: str, sweep: Callable[[], T]) -> T:
    """Run a sweep and record it in sweep_runs: started, finished, its counts or its error."""
    with conn.transaction():
        row = conn.execute(QUERIES["start_run"], {"name": name}).fetchone()
    assert row is not None
    run_id = row[0]
    try:
        result = sweep()
    except Exception as exc:
        with conn.transaction():
            conn.execute(
                QUERIES["finish_run"],
                {"id": run_id, "counts": None, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
        raise
    with conn.transaction():
        counts = Jsonb(result) if isinstance(result, dict) else None
        conn.execute(QUERIES["finish_run"], {"id": run_id, "counts": counts, "error": None})
        if name == "retention":
            conn.execute(QUERIES["prune_runs"])
    return result


def last_successes(conn: db.Connection, names: list[str]) -> dict[str, datetime | None]:
    return dict(conn.execute(QUERIES["last_successes"], {"names": names}).fetchall())


def stuck(conn: db.Connection, settings: Settings) -> dict[str, int]:
    params = {
        "orders": settings.reconcile_order_stuck_after,
        "refunds": settings.reconcile_refund_stuck_after,
        "orphans": settings.reconcile_refund_orphan_after,
        "subscriptions": settings.reconcile_subscription_stuck_after,
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
            "last_success": last_successes(conn, list(intervals(settings))),
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
        last = last_successes(conn, list(intervals(settings)))
        sweeps: dict[str, dict[str, Any]] = {
            name: {"last_success": last[name], "overdue": _overdue(last[name], every, now)}
            for name, every in intervals(settings).items()
            if name != "reconcile" or settings.reconcile_worker_enabled
        }
        document: dict[str, Any] = {
            "outbox": {"queued": outbox[0], "oldest_queued_seconds": round(outbox[1], 1)},
            "results_last_hour": dict(zip(("ok", "skipped", "error"), results, strict=True)),
            "stuck": stuck(conn, settings),
            "needs_a_human": human,
            "subscriptions": subscriptions_by_status(conn),
            "disputes": {"open": disputes[0], "nearest_deadline": disputes[1]},
            "sweeps": sweeps,
        }
    healthy = not human and not any(s["overdue"] for s in sweeps.values())
    return document, healthy


def _overdue(last_success: datetime | None, every: timedelta, now: datetime) -> bool:
    return last_success is None or now - last_success > 2 * every
