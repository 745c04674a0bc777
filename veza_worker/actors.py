"""Dramatiq actors: thin entry points that open a connection and call the module that knows.

One actor per delivery, one per automatic refund to send, and one per sweep of sweeps.SWEEPS.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import dramatiq
from dramatiq.middleware import CurrentMessage

from veza_worker import automatic_refunds, metrics, sweeps, webhooks
from veza_worker.broker import resources

log = logging.getLogger(__name__)

MAX_RETRIES = 10
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 300_000
# While Dramatiq holds a retry, the redrive keeps off the row: the longest backoff plus a margin.
RETRY_WITHIN = timedelta(milliseconds=MAX_BACKOFF_MS) + timedelta(minutes=1)


@dramatiq.actor(
    queue_name="webhooks", max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS
)
def process_webhook(log_id: int) -> None:
    """Apply one stored delivery; running it twice changes nothing."""
    with (
        resources.pool.connection() as conn,
        automatic_refunds.enqueue_after_commit(conn, send_automatic_refund),
    ):
        result = webhooks.process(
            conn, log_id, resources.settings, final_attempt=_final_attempt(), retry_within=RETRY_WITHIN
        )
    metrics.webhook_result(result)


def send_automatic_refund(refund_id: uuid.UUID) -> None:
    """Enqueue one automatic refund (what `enqueue_after_commit` is given)."""
    send_one_automatic_refund.send(str(refund_id))


@dramatiq.actor(
    queue_name="refunds", max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS
)
def send_one_automatic_refund(refund_id: str) -> None:
    """Send one automatic refund as soon as it is committed; the automatic_refunds sweep is the
    fallback (a lost message, an ambiguous answer), and a send that finds it sent does nothing."""
    if resources.client is None:
        log.warning("automatic refund %s left for the sweep: payment provider not configured", refund_id)
        return
    with resources.pool.connection() as conn:
        automatic_refunds.send(conn, resources.client, uuid.UUID(refund_id))


def _sweep_actor(sweep: sweeps.Sweep) -> dramatiq.Actor[[], None]:
    """The actor the clock sends for one sweep of the table."""

    def run() -> None:
        if sweep.needs_psp and resources.client is None:
            log.warning("%s skipped: payment provider not configured", sweep.name)
            return
        with resources.pool.connection() as conn:
            sweeps.run(sweep, sweeps.Context(conn, resources.settings, resources.client))

    run.__doc__ = sweep.help
    time_limit = int(sweep.time_limit.total_seconds() * 1000)
    declare = dramatiq.actor(
        actor_name=sweep.actor, queue_name="sweeps", max_retries=0, time_limit=time_limit
    )
    return declare(run)


# One actor per sweep, by sweep name; the clock sends them.
SWEEPS = {sweep.name: _sweep_actor(sweep) for sweep in sweeps.SWEEPS}


def _final_attempt() -> bool:
    """True when Dramatiq will not retry the current message if it fails."""
    message = CurrentMessage.get_current_message()
    if message is None:  # called directly, not by a worker
        return True
    max_retries = message.options.get("max_retries", MAX_RETRIES)
    return bool(message.options.get("retries", 0) >= max_retries)
