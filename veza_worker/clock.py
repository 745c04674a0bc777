"""The clock dyno: APScheduler that only enqueues the sweeps of sweeps.SWEEPS, and records its first
start. The sweeps' own locking makes a second clock harmless."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from veza_worker import actors, db, sweeps
from veza_worker.settings import Settings

log = logging.getLogger(__name__)


def schedule(scheduler: Any, settings: Settings, *, scale: float = 1.0) -> None:
    """Add every enabled sweep of the table; `scale` shrinks the intervals (tests run a fast clock)."""
    for sweep in sweeps.SWEEPS:
        if not sweep.enabled(settings):
            log.info("clock: %s not scheduled: %s=false", sweep.name, str(sweep.enabled_by).upper())
            continue
        trigger = _trigger(sweep, settings, scale)
        # coalesce + max_instances: a late clock sends one message, never a burst.
        send = actors.SWEEPS[sweep.name].send
        scheduler.add_job(send, trigger, id=sweep.name, name=sweep.name, coalesce=True, max_instances=1)
        log.info("clock scheduled %s: %s", sweep.name, trigger)


def _trigger(sweep: sweeps.Sweep, settings: Settings, scale: float) -> Any:
    if sweep.cron is not None and scale == 1.0:
        return CronTrigger.from_crontab(sweep.cron, timezone="UTC")
    return IntervalTrigger(seconds=max(sweep.interval(settings).total_seconds() * scale, 0.05))


def record_start(scheduler: Any, settings: Settings) -> None:
    """Record the clock's first start, from which a sweep that never ran counts as overdue. The
    clock needs no database otherwise, so one that is down is tried again a minute later."""
    try:
        with db.connect(settings.database_url) as conn:
            started = sweeps.record_clock_start(conn)
    except psycopg.OperationalError as exc:
        log.warning("clock start not recorded, trying again in a minute: %s", exc)
        retry_at = datetime.now(UTC) + timedelta(minutes=1)
        scheduler.add_job(record_start, DateTrigger(retry_at), args=[scheduler, settings])
        return
    log.info("clock first started at %s", started.isoformat())


def run(settings: Settings) -> None:
    """Block until SIGTERM or SIGINT, then stop cleanly, whenever the signal arrives."""
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("clock stopping on signal %d", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler = BackgroundScheduler(timezone="UTC")
    schedule(scheduler, settings)
    scheduler.start()
    record_start(scheduler, settings)
    stopping.wait()
    scheduler.shutdown(wait=True)
