"""The clock dyno: APScheduler that only enqueues. The jobs' own locking makes a second clock harmless."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from veza_worker import actors
from veza_worker.settings import Settings

log = logging.getLogger(__name__)


def schedule(scheduler: Any, settings: Settings, *, scale: float = 1.0) -> None:
    """Add every periodic job; `scale` shrinks the intervals (tests run a fast clock)."""
    jobs = [
        ("redrive", actors.redrive_webhooks, _every(timedelta(minutes=1), scale)),
        ("trial_end", actors.end_trials, _every(timedelta(minutes=5), scale)),
        ("renew", actors.renew_subscriptions, _every(timedelta(minutes=5), scale)),
        ("automatic_refunds", actors.send_automatic_refunds, _every(timedelta(minutes=1), scale)),
        ("retention", actors.cleanup_webhook_log, _daily(scale)),
    ]
    if settings.reconcile_worker_enabled:
        jobs.append(("reconcile", actors.reconcile, _every(settings.reconcile_interval, scale)))
    else:
        log.info("clock: reconciliation disabled by RECONCILE_WORKER_ENABLED=false")
    for job_id, actor, trigger in jobs:
        # coalesce + max_instances: a late clock sends one message, never a burst.
        scheduler.add_job(actor.send, trigger, id=job_id, coalesce=True, max_instances=1)
        log.info("clock scheduled %s: %s", job_id, trigger)


def _every(interval: timedelta, scale: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=max(interval.total_seconds() * scale, 0.05))


def _daily(scale: float) -> Any:
    if scale == 1.0:
        return CronTrigger(hour=3, minute=17)  # quiet hours, off the top of the hour
    return _every(timedelta(days=1), scale)


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
    stopping.wait()
    scheduler.shutdown(wait=True)
