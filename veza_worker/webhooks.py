"""The audit log as outbox: record a delivery, apply it exactly once, redrive and replay it."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from veza_worker import db, discrepancies, disputes, errors, events, ledger, orders, payouts, refunds
from veza_worker.settings import Settings
from veza_worker.subscriptions import invoices

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

REDRIVE_AFTER = timedelta(minutes=2)
# How long a webhook naming a payment or refund we do not know is retried before it is skipped:
# it may have beaten our own commit.
UNKNOWN_OBJECT_PATIENCE = timedelta(minutes=10)
REDRIVE_BATCH = 1_000
_MAX_RESULT_CHARS = 500

Handler = Callable[[db.Connection, events.Event, Settings], str]
Enqueue = Callable[[int], Any]


def handle_payment(conn: db.Connection, event: events.Event, settings: Settings) -> str:
    """A terminal payment event, for the order or the subscription invoice that owns the payment."""
    owner = _owner(conn, event)
    if isinstance(owner, orders.Order):
        return orders.apply_payment(conn, owner, event, settings.refund_window)
    invoice_id, subscription_id = owner
    return invoices.apply_payment(conn, subscription_id, invoice_id, event)


def handle_cancelled_post_capture(conn: db.Connection, event: events.Event, settings: Settings) -> str:
    """payment_cancelled_post_capture: the money went back after capture. A payment we still held
    pending just failed; a paid order or invoice is reversed in full (refunds.py). Also what
    `settle` applies, as a synthetic delivery, for a payment the PSP's list shows cancelled so."""
    owner = _owner(conn, event)
    if not isinstance(owner, orders.Order):
        return refunds.cancel_invoice_after_capture(conn, owner[0], event, settings)
    if owner.status == orders.Status.PENDING:
        return orders.apply_payment(conn, owner, event, settings.refund_window)
    return refunds.cancel_after_capture(conn, owner, event)


def _owner(conn: db.Connection, event: events.Event) -> orders.Order | tuple[uuid.UUID, uuid.UUID]:
    """The locked order a payment is for, else its invoice's (invoice id, subscription id)."""
    payment_id = events.object_id(event.data, "payment_id")
    if payment_id is None:
        raise events.BadDelivery("missing payment_id")
    order = orders.lock_by_payment(conn, payment_id)
    if order is not None:
        return order
    invoice = invoices.find_by_payment(conn, payment_id)
    if invoice is not None:
        return invoice
    raise errors.UnknownObject("skipped: unknown payment")  # it may beat our own commit: retried


INFORMATIONAL = "skipped: informational"


def informational(conn: db.Connection, event: events.Event, settings: Settings) -> str:
    """An event that changes nothing of ours (a step before the final word, or Hyperswitch's own
    billing front-end): recorded in the audit log, nothing more."""
    return INFORMATIONAL


# event_type → the handler that applies it and returns the final processing_result.
# Types with no entry end `skipped: unhandled <type>`, unless the object is a refund.
HANDLERS: dict[str, Handler] = {
    "payment_succeeded": handle_payment,
    "payment_captured": handle_payment,
    "payment_failed": handle_payment,
    "payment_cancelled": handle_payment,
    "payment_expired": handle_payment,  # never completed: as payment_failed
    "payment_cancelled_post_capture": handle_cancelled_post_capture,
    "action_required": invoices.handle_action_required,
    **dict.fromkeys(
        [
            "payment_processing",
            "payment_authorized",
            "payment_partially_authorized",
            "mandate_active",
            "invoice_paid",
        ],
        informational,
    ),
    "refund_succeeded": refunds.handle_refund,
    "refund_failed": refunds.handle_refund,
    "mandate_revoked": invoices.forget_payment_method,
    **dict.fromkeys(
        [
            "dispute_opened",
            "dispute_challenged",
            "dispute_won",
            "dispute_cancelled",
            "dispute_lost",
            "dispute_accepted",
            "dispute_expired",
        ],
        disputes.handle_dispute,
    ),
    **dict.fromkeys(payouts.EVENTS, payouts.handle_payout),
}


@dataclass(frozen=True)
class Delivery:
    """One POST as the audit row stores it: every field already storable."""

    payload: str
    payload_raw: bytes | None
    signature_valid: bool
    signature_key_index: int | None
    processing_result: str
    source_ip: str | None
    user_agent: str | None
    request_id: str
    event_type: str | None
    event_id: str | None


@dataclass(frozen=True)
class LogRow:
    id: int
    payload: str
    payload_raw: bytes | None
    signature_valid: bool
    processing_result: str
    event_id: str | None
    age: timedelta  # since the receiver recorded it

    @property
    def body(self) -> bytes:
        """The exact bytes that were signed."""
        return self.payload_raw if self.payload_raw is not None else self.payload.encode("utf-8")


def delivery(
    body: bytes, headers: Mapping[str, str], source_ip: str | None, secrets: tuple[str, ...]
) -> Delivery:
    """Everything the receiver stores about one POST; `headers` are latin-1 decoded, as ASGI gives them."""
    payload, payload_raw = events.decode_body(body)
    key_index = events.matching_secret(body, headers.get(events.SIGNATURE_HEADER), secrets)
    event_type, event_id = events.peek(body)
    return Delivery(
        payload=payload,
        payload_raw=payload_raw,
        signature_valid=key_index is not None,
        signature_key_index=key_index,
        processing_result="queued" if key_index is not None else "signature_invalid",
        source_ip=_header_text(source_ip),
        user_agent=_header_text(headers.get("user-agent")),
        request_id=_header_text(headers.get("x-request-id")) or str(uuid.uuid4()),
        event_type=event_type,
        event_id=event_id,
    )


_CUT = 200


def cut_down(record: Delivery) -> Delivery:
    """The same delivery with every short field cut to 200 characters and no event_id (a cut id
    could dedupe two different events): what the receiver stores when a value was refused. The
    body (payload) is kept whole: it is what gets applied, and handlers are idempotent anyway."""
    return replace(
        record,
        source_ip=record.source_ip and record.source_ip[:_CUT],
        user_agent=record.user_agent and record.user_agent[:_CUT],
        request_id=record.request_id[:_CUT],
        event_type=record.event_type and record.event_type[:_CUT],
        event_id=None,
    )


def _header_text(value: str | None) -> str | None:
    """A header as text: UTF-8 recovered from ASGI's latin-1 where it was UTF-8, replaced where not."""
    if not value:
        return None
    return events.storable(value.encode("latin-1", "replace").decode("utf-8", "replace"))


async def insert_log(conn: psycopg.AsyncConnection[Any], record: Delivery) -> int:
    cur = await conn.execute(QUERIES["insert_log"], asdict(record))
    row = await cur.fetchone()
    assert row is not None  # INSERT ... RETURNING always returns its row
    return int(row[0])


async def insert_logs(conn: psycopg.AsyncConnection[Any], records: list[Delivery]) -> list[int]:
    """Several deliveries in one INSERT (the receiver's group commit); their ids, in order."""
    columns = {name: [getattr(r, name) for r in records] for name in asdict(records[0])}
    cur = await conn.execute(QUERIES["insert_logs"], columns)
    found = await cur.fetchall()
    assert len(found) == len(records) and found[0][1] == len(records)
    return [int(row[0]) for row in found]


async def count_suppressed(conn: psycopg.AsyncConnection[Any], log_id: int) -> None:
    """One more invalid-signature delivery counted on a stored row instead of stored itself."""
    await conn.execute(QUERIES["count_suppressed"], {"log_id": log_id, "count": 1})


def insert_log_sync(conn: db.Connection, record: Delivery) -> int:
    row = conn.execute(QUERIES["insert_log"], asdict(record)).fetchone()
    assert row is not None
    return int(row[0])


RECONCILER = "veza-worker-reconciler"


def apply_synthetic(
    conn: db.Connection, settings: Settings, event_type: str, content_type: str, obj: Mapping[str, Any]
) -> tuple[int, str | None]:
    """Record the PSP's own answer as a delivery (no event_id, user_agent the reconciler) and apply
    it in the caller's transaction, through the same handlers as a webhook."""
    envelope = {
        "merchant_id": obj.get("merchant_id"),
        "event_id": None,
        "event_type": event_type,
        "content": {"type": content_type, "object": dict(obj)},
        "timestamp": datetime.now(UTC).isoformat(),
    }
    record = Delivery(
        payload=events.storable(json.dumps(envelope)),
        payload_raw=None,
        signature_valid=True,  # it came from the PSP's API over our authenticated client
        signature_key_index=None,
        processing_result="queued",
        source_ip=None,
        user_agent=RECONCILER,
        request_id=str(uuid.uuid4()),
        event_type=event_type,
        event_id=None,
    )
    log_id = insert_log_sync(conn, record)
    # The PSP's own answer cannot beat a commit of ours: an unknown object is final at once.
    result = apply(conn, log_id, settings, patient=False)
    if result is not None and result.startswith("error"):
        _synthetic_failed(conn, log_id, event_type, obj, result)
    return log_id, result


_PSP_IDS = ("refund_id", "payout_id", "dispute_id", "payment_id")  # the object's own id comes first


def _synthetic_failed(
    conn: db.Connection, log_id: int, event_type: str, obj: Mapping[str, Any], result: str
) -> None:
    """The PSP's own answer could not be applied: a person looks (its discrepancy is what
    `status` counts, not the error row), and nothing retries it on its own."""
    psp_id = next((str(obj[key]) for key in _PSP_IDS if isinstance(obj.get(key), str)), "")
    discrepancies.open_one(
        conn,
        discrepancies.Kind.SYNTHETIC_DELIVERY_FAILED,
        f"the payment provider's {event_type} for {psp_id} (log_id {log_id}) could not be applied: {result}",
        subject=psp_id,
    )


# -- applying a delivery --------------------------------------------------------------------------


def process(
    conn: db.Connection, log_id: int, settings: Settings, *, final_attempt: bool, retry_within: timedelta
) -> str | None:
    """Apply one stored delivery and write its final processing_result; running it twice changes nothing.

    A handler that raises rolls back everything it did. The failure is counted on the row and
    re-raised for Dramatiq to retry, except on the final attempt, where the row ends `error: ...`.
    """
    try:
        with conn.transaction():
            return apply(conn, log_id, settings)
    except Exception as exc:
        reason = _clip(f"{type(exc).__name__}: {exc}")
        final = exc.result if isinstance(exc, errors.UnknownObject) else f"error: {reason}"
        last = final_attempt or not transient(exc)  # a deterministic error fails the same way every time
        with conn.transaction():
            conn.execute(
                QUERIES["record_failure"], {"log_id": log_id, "error": reason, "retry_within": retry_within}
            )
            if last:
                finish(conn, log_id, final)
        if not last:
            raise
        log.error("webhook log_id=%s failed for good: %s", log_id, reason)
        return final


def transient(exc: BaseException) -> bool:
    """Whether a retry can cure it: the database busy or away, the PSP away, or an object our own
    transaction has not committed yet. Anything else (a bad value, a constraint, a bug) cannot."""
    if isinstance(exc, errors.UnknownObject | errors.HyperswitchUnavailable | ConnectionError | TimeoutError):
        return True
    return db.is_transient(exc)


def apply(conn: db.Connection, log_id: int, settings: Settings, *, patient: bool = True) -> str | None:
    """Apply a stored delivery inside the caller's transaction; a final row is left as it is.

    `patient`: an object we do not know yet is retried (UnknownObject raised) until the delivery is
    UNKNOWN_OBJECT_PATIENCE old; a synthetic delivery is not patient.
    """
    row = lock_log(conn, log_id)
    if row is None:
        log.warning("webhook log_id=%s not found (deleted?)", log_id)
        return None
    if not row.signature_valid or row.processing_result != "queued":
        return row.processing_result  # already final: a replayed message is a no-op
    result = _clip(_outcome(conn, row, settings, patient))
    finish(conn, log_id, result)
    # A delivery that changed something says so in its handler's own line; with this one too,
    # logging was a tenth of the worker's GIL time in bench/worker's profile. The rest stay INFO.
    log.log(logging.DEBUG if result == "ok" else logging.INFO, "webhook log_id=%s result=%r", log_id, result)
    return result


def _outcome(conn: db.Connection, row: LogRow, settings: Settings, patient: bool) -> str:
    try:
        event = events.parse(row.body)
    except events.BadDelivery as exc:
        return f"error: {exc}"
    try:
        return _dispatch(conn, row, event, settings, patient)
    except events.BadDelivery as exc:  # a value inside the object that can never be applied
        return f"error: {exc}"


def _dispatch(
    conn: db.Connection, row: LogRow, event: events.Event, settings: Settings, patient: bool
) -> str:
    if row.event_id is not None and event_already_applied(conn, row.event_id, row.id):
        return "skipped: duplicate event"
    handler = handler_for(event)
    if handler is None:
        return f"skipped: unhandled {event.event_type}"
    try:
        with ledger.caused_by(row.id):  # its postings name this delivery
            return handler(conn, event, settings)
    except errors.UnknownObject as exc:
        if row.age >= UNKNOWN_OBJECT_PATIENCE or not patient:
            return exc.result
        raise  # retried with backoff: our own row may not be committed yet


def handler_for(event: events.Event) -> Handler | None:
    """By event_type; a refund object of any other type (or none) goes to the refund handler."""
    handler = HANDLERS.get(event.event_type or "")
    if handler is None and isinstance(event.data.get("refund_id"), str):
        return refunds.handle_refund
    return handler


def lock_log(conn: db.Connection, log_id: int) -> LogRow | None:
    with conn.cursor(row_factory=class_row(LogRow)) as cur:
        return cur.execute(QUERIES["lock_log"], {"log_id": log_id}).fetchone()


def event_already_applied(conn: db.Connection, event_id: str, log_id: int) -> bool:
    """Whether another delivery of the same event already reached a final, non-error outcome.

    The event's lock comes first, so every delivery of it ahead of this one has committed or
    rolled back; the check is its own statement, so its snapshot sees what they committed. Both
    go in one round trip (psycopg's pipeline mode), the lock held until our transaction ends.
    """
    params = {"event_id": event_id, "log_id": log_id}
    with conn.pipeline():
        conn.execute(QUERIES["lock_event"], params)
        row = conn.execute(QUERIES["event_already_applied"], params).fetchone()
    return bool(row and row[0])


def finish(conn: db.Connection, log_id: int, result: str) -> None:
    conn.execute(QUERIES["finish_log"], {"log_id": log_id, "result": result})


def _clip(result: str) -> str:
    return events.storable(result[:_MAX_RESULT_CHARS])


# -- redrive and replay ---------------------------------------------------------------------------


def redrive(
    conn: db.Connection,
    enqueue: Enqueue,
    *,
    older_than: timedelta = REDRIVE_AFTER,
    limit: int = REDRIVE_BATCH,
) -> dict[str, int]:
    """Enqueue again every outbox row still `queued` after `older_than` (a lost send, a dead worker)."""
    with conn.transaction():
        rows = conn.execute(QUERIES["claim_stuck"], {"older_than": older_than, "limit": limit}).fetchall()
    for (log_id,) in rows:
        enqueue(log_id)
    if rows:
        log.warning("redrive enqueued %d stuck webhook rows, oldest log_id=%s", len(rows), rows[0][0])
    return {"redriven": len(rows)}


def replay(conn: db.Connection, log_ids: list[int], enqueue: Enqueue, *, force: bool) -> dict[str, Any]:
    """Enqueue stored deliveries again. A processed row keeps its result unless `force`.

    Every id must exist, or nothing is enqueued. A row whose signature was invalid is never applied.
    """
    with conn.transaction():
        rows = {r[0]: r for r in conn.execute(QUERIES["find_logs"], {"ids": log_ids}).fetchall()}
        missing = [i for i in log_ids if i not in rows]
        if missing:
            raise errors.NotFound(f"webhook log rows not found: {', '.join(map(str, missing))}")
        outcome = {i: _replay_action(conn, rows[i][1], rows[i][2], i, force) for i in dict.fromkeys(log_ids)}
    for log_id, action in outcome.items():
        if action == "enqueued":
            enqueue(log_id)
    counts = {action: sum(1 for a in outcome.values() if a == action) for action in _REPLAY_ACTIONS}
    return {**counts, "rows": {str(i): a for i, a in outcome.items()}}


_REPLAY_ACTIONS = ("enqueued", "unchanged", "refused")


def _replay_action(conn: db.Connection, signature_valid: bool, result: str, log_id: int, force: bool) -> str:
    if not signature_valid:
        return "refused"
    if result == "queued":
        return "enqueued"
    if not force:
        return "unchanged"
    conn.execute(QUERIES["requeue_log"], {"log_id": log_id})
    return "enqueued"
