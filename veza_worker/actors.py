"""Dramatiq actors: thin entry points that open a connection and call the module that knows."""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
from dramatiq.middleware import CurrentMessage

from veza_worker import metrics, ops, refunds, retention, webhooks
from veza_worker import reconcile as reconciler
from veza_worker.broker import resources
from veza_worker.subscriptions import billing

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
    with resources.pool.connection() as conn:
        result = webhooks.process(
            conn, log_id, resources.settings, final_attempt=_final_attempt(), retry_within=RETRY_WITHIN
        )
    metrics.webhook_result(result)


@dramatiq.actor(queue_name="sweeps", max_retries=0)
def redrive_webhooks() -> None:
    """Enqueue again the outbox rows no worker finished."""
    with resources.pool.connection() as conn:
        ops.run_sweep(conn, "redrive", lambda: webhooks.redrive(conn, process_webhook.send))


@dramatiq.actor(queue_name="sweeps", max_retries=0, time_limit=3_600_000)
def cleanup_webhook_log() -> None:
    """Daily retention of the audit log."""
    days = resources.settings.webhook_log_retention_days
    with resources.pool.connection() as conn:
        ops.run_sweep(conn, "retention", lambda: retention.cleanup(conn, timedelta(days=days)))


@dramatiq.actor(queue_name="sweeps", max_retries=0, time_limit=3_600_000)
def end_trials() -> None:
    """Trials past their end → pending_payment, invoice, PSP payment."""
    with resources.pool.connection() as conn:
        ops.run_sweep(conn, "trial_end", lambda: billing.end_trials(conn, resources.client))


@dramatiq.actor(queue_name="sweeps", max_retries=0, time_limit=3_600_000)
def renew_subscriptions() -> None:
    """Period-end cancels, renewals, dunning steps."""
    with resources.pool.connection() as conn:
        ops.run_sweep(conn, "renew", lambda: billing.renew(conn, resources.client, resources.settings))


@dramatiq.actor(queue_name="sweeps", max_retries=0)
def send_automatic_refunds() -> None:
    """The refund outbox: automatic refunds of money we must not keep."""
    if resources.client is None:
        return
    with resources.pool.connection() as conn:
        refunds.send_automatic(conn, resources.client)


@dramatiq.actor(queue_name="sweeps", max_retries=0, time_limit=3_600_000)
def reconcile() -> None:
    """One reconciliation tick."""
    if resources.client is None:
        log.warning("reconcile skipped: payment provider not configured")
        return
    client = resources.client
    with resources.pool.connection() as conn:
        ops.run_sweep(conn, "reconcile", lambda: reconciler.tick(conn, client, resources.settings))


def _final_attempt() -> bool:
    """True when Dramatiq will not retry the current message if it fails."""
    message = CurrentMessage.get_current_message()
    if message is None:  # called directly, not by a worker
        return True
    max_retries = message.options.get("max_retries", MAX_RETRIES)
    return bool(message.options.get("retries", 0) >= max_retries)
