"""The console's actions: each calls the function its CLI command calls, and leaves an ops_actions row.

Every action needs a note; the row says who acted, on what, and why. Where the action is one
database transaction the row is written in it (both or neither); where it sends a message after
its commit (a replay), the row is written once the action has succeeded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from psycopg.rows import dict_row

from veza_worker import automatic_refunds, db, discrepancies, errors, payouts, webhooks

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

MAX_NOTE_CHARS = 2_000


def check_note(note: str) -> str:
    """The note every action needs: not blank, and short enough to read."""
    note = note.strip()
    if not note:
        raise errors.DomainError("a note is required")
    if len(note) > MAX_NOTE_CHARS:
        raise errors.DomainError(f"the note is longer than {MAX_NOTE_CHARS} characters")
    return note


def record(
    conn: db.Connection, username: str, action: str, object_kind: str, object_id: str, note: str
) -> int:
    params = {
        "username": username,
        "action": action,
        "object_kind": object_kind,
        "object_id": object_id,
        "note": note,
    }
    row = conn.execute(QUERIES["record_action"], params).fetchone()
    assert row is not None
    log.info("ops action %s on %s %s by %s: %s", action, object_kind, object_id, username, note)
    return int(row[0])


def actions_on(conn: db.Connection, object_kind: str, object_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            QUERIES["actions_on"], {"object_kind": object_kind, "object_id": object_id}
        ).fetchall()


def resolve_discrepancy(conn: db.Connection, username: str, discrepancy_id: int, note: str) -> dict[str, Any]:
    """`veza-worker resolve`, by a console user: the resolution and its ops_actions row commit together."""
    note = check_note(note)
    with conn.transaction():
        resolved = discrepancies.resolve(conn, discrepancy_id, by=username, note=note)
        record(conn, username, "resolve", "discrepancy", str(discrepancy_id), note)
    return resolved


def replay_delivery(
    conn: db.Connection, username: str, log_id: int, note: str, enqueue: Callable[[int], Any]
) -> dict[str, Any]:
    """`veza-worker replay --force LOG_ID`: the row is queued again and applied by a worker."""
    note = check_note(note)
    result = webhooks.replay(conn, [log_id], enqueue, force=True)
    if result["refused"]:
        raise errors.DomainError(f"delivery {log_id} has an invalid signature: it is never applied")
    with conn.transaction():
        record(conn, username, "replay", "delivery", str(log_id), note)
    return result


def hold_payouts(conn: db.Connection, username: str, seller_id: uuid.UUID, note: str) -> dict[str, Any]:
    """`veza-worker hold-payouts SELLER_ID --reason NOTE`: the hold and its ops_actions row commit
    together."""
    note = check_note(note)
    with conn.transaction():
        held = payouts.hold(conn, seller_id, note)
        record(conn, username, "hold", "seller", str(seller_id), note)
    return held


def release_payouts(conn: db.Connection, username: str, seller_id: uuid.UUID, note: str) -> dict[str, Any]:
    """`veza-worker release-payouts SELLER_ID`; the note says why, in the ops_actions row."""
    note = check_note(note)
    with conn.transaction():
        released = payouts.release(conn, seller_id)
        record(conn, username, "release", "seller", str(seller_id), note)
    return released


def retry_refund(
    conn: db.Connection,
    username: str,
    refund_id: uuid.UUID,
    note: str,
    enqueue: Callable[[uuid.UUID], Any],
) -> dict[str, Any]:
    """`veza-worker retry-refund REFUND_ID`: the new automatic refund and the ops_actions row commit
    together; the refund is enqueued once they have."""
    note = check_note(note)
    with automatic_refunds.enqueue_after_commit(conn, enqueue), conn.transaction():
        retried = automatic_refunds.retry(conn, refund_id, by=username, note=note)
        record(conn, username, "retry", "refund", str(refund_id), note)
    return retried
