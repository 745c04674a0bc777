"""The retention sweep: old audit rows go, in small batches, never in one long lock."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from veza_worker import db

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

BATCH_SIZE = 10_000
PAUSE_SECONDS = 0.1


def cleanup(
    conn: db.Connection, retention: timedelta, *, batch_size: int = BATCH_SIZE, pause: float = PAUSE_SECONDS
) -> dict[str, int]:
    """Delete log rows older than `retention`, one short transaction per batch, pausing between.

    Rows still `queued` or ended in `error…` need a human first and are kept whatever their age.
    Then the reconciler's memory of rows that are no longer open is pruned.
    """
    deleted = batches = 0
    while True:
        started = time.monotonic()
        with conn.transaction():
            count = conn.execute(
                QUERIES["delete_expired"], {"older_than": retention, "limit": batch_size}
            ).rowcount
        deleted += count
        batches += 1
        if count < batch_size:
            break
        # At least `pause`, and twice what the batch took: on a busy database the sweep yields
        # two thirds of the time, so the receiver's latency barely notices it.
        time.sleep(max(pause, 2 * (time.monotonic() - started)))
    with conn.transaction():
        pruned = conn.execute(QUERIES["prune_reconcile_state"]).rowcount
    log.info(
        "retention deleted %d webhook log rows in %d batches; %d reconcile_state rows pruned",
        deleted,
        batches,
        pruned,
    )
    return {"deleted": deleted, "batches": batches, "reconcile_state_pruned": pruned}
