"""Sellers get paid: the hold release, the payout sweep, the PSP's results, and ops' holds.

    pending →(success) paid →(reversed: the bank returned it) reversed
    pending →(failed | cancelled | expired | ineligible, or a definitive create rejection) failed

A payout is one (seller, currency)'s whole available balance. Its row and its posting
(`available → in_transit`) commit before `POST /payouts/create`; its merchant_reference, sent as
`merchant_order_reference_id`, finds it again after a crash or an ambiguous answer, before any
resend (the reconciler's payouts phase). A final status arriving first has the effects of every
step before it; a failed or reversed payout ignores the rest; a paid one can still be reversed.

    created   seller:available -P, seller:in_transit +P       the transfers it carries: payout_id
    paid      seller:in_transit -P, world +P                   its transfers completed
    failed    seller:in_transit -P, seller:available +P       its transfers freed
    reversed  world -P, seller:available +P                    its transfers pending again, freed

Lock order: an order before its sellers' balances (the hold release); a payout row, then the
seller's balance (the posting), then transfers.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row

from veza_worker import db, discrepancies, errors, events, hyperswitch, ledger, metrics
from veza_worker.settings import Settings

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

PAGE = 500  # orders or sellers read per query; each is then claimed in its own transaction
LANES = 8  # payouts created and sent at once, each lane on its own connection
STOP_AFTER_UNAVAILABLE = 3  # ambiguous creates in a row: the PSP is down, the sweep stops
UNAVAILABLE = "payment provider unavailable, will be reconciled"
_ZERO = uuid.UUID(int=0)
# What pay-sellers prints: created = payouts committed; each then submitted, rejected (failed,
# money back), ambiguous or unauthorized (pending, for the reconciler); skipped = no longer due
# once claimed; no_payout_method and held = sellers with enough available that were not paid.
COUNTS = (
    "holds_released",
    "created",
    "submitted",
    "rejected",
    "ambiguous",
    "unauthorized",
    "skipped",
    "errors",
    "no_payout_method",
    "held",
)


class Status(StrEnum):
    """payouts.status."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    REVERSED = "reversed"


# Hyperswitch's PayoutStatus values, by what each means for the money.
PSP_PAID = frozenset({"success"})
PSP_FAILED = frozenset({"failed", "cancelled", "expired", "ineligible"})
PSP_REVERSED = frozenset({"reversed"})
PSP_NOT_FINAL = frozenset(
    {
        "initiated",
        "pending",
        "requires_creation",
        "requires_confirmation",
        "requires_payout_method_data",
        "requires_fulfillment",
        "requires_vendor_account_creation",
    }
)
PSP_STATUSES = PSP_PAID | PSP_FAILED | PSP_REVERSED | PSP_NOT_FINAL

# The payout_* webhooks (content.type payout_details) and the status each stands for when the
# object carries none.
EVENTS: dict[str, str] = {
    "payout_success": "success",
    "payout_failed": "failed",
    "payout_cancelled": "cancelled",
    "payout_expired": "expired",
    "payout_reversed": "reversed",
    "payout_initiated": "initiated",
    "payout_processing": "pending",
}
CONTENT_TYPE = "payout_details"
_REFERENCE = re.compile(r"po_[a-z2-7]{26}")


def is_final(psp_status: str) -> bool:
    return psp_status in PSP_PAID | PSP_FAILED | PSP_REVERSED


def event_type(psp_status: str) -> str:
    """The webhook event a PSP status stands for (the reconciler's synthetic deliveries)."""
    if psp_status == "ineligible":
        return "payout_failed"
    found = [name for name, status in EVENTS.items() if status == psp_status]
    return found[0] if found else "payout_processing"


@dataclass(frozen=True)
class Payout:
    id: uuid.UUID
    seller_id: uuid.UUID
    amount: int
    currency: str
    status: str  # a Status
    hyperswitch_payout_id: str | None
    merchant_reference: str
    customer_id: str
    payout_method_id: str
    payout_type: str
    submitted_at: datetime | None


def lock(conn: db.Connection, payout_id: uuid.UUID) -> Payout | None:
    return db.one(conn, Payout, QUERIES["lock_payout"], {"id": payout_id})


def lock_at_psp(conn: db.Connection, psp_id: str | None, reference: str | None) -> Payout | None:
    return db.one(conn, Payout, QUERIES["lock_payout_at_psp"], {"psp_id": psp_id, "reference": reference})


# -- the hold release -------------------------------------------------------------------------------


def release_holds(conn: db.Connection) -> int:
    """Every order whose refund window has passed, with no open dispute and no refund in flight:
    its sellers' earnings move held → available, one posting per order, in the order's own
    transaction (order locked first, as every order writer does). The orders released."""
    released = 0
    after: tuple[Any, uuid.UUID] = ("-infinity", _ZERO)
    while True:
        params = {"after_deadline": after[0], "after_id": after[1], "limit": PAGE}
        with conn.transaction():
            page = conn.execute(QUERIES["due_holds"], params).fetchall()
        for order_id, deadline in page:
            after = (deadline, order_id)
            released += _release_hold(conn, order_id)
        if len(page) < PAGE:
            return released


def _release_hold(conn: db.Connection, order_id: uuid.UUID) -> int:
    with conn.transaction():
        _no_commit_wait(conn)  # lost in a crash: released again by the next sweep
        row = conn.execute(QUERIES["lock_due_hold"], {"order_id": order_id}).fetchone()
        if row is None:  # busy, or no longer due: the next sweep looks again
            return 0
        _id, currency = row
        ledger.post(conn, ledger.hold_released(order_id, currency, ledger.order_held(conn, order_id)))
        conn.execute(QUERIES["mark_hold_released"], {"order_id": order_id})
    return 1


# -- the payout sweep -------------------------------------------------------------------------------


def pay_sellers(conn: db.Connection, client: hyperswitch.Client, settings: Settings) -> dict[str, int]:
    """`veza-worker pay-sellers`: release what is due, then one payout per (seller, currency)
    whose whole available balance reaches PAYOUT_MINIMUM (a payout method, no payout in flight,
    no hold). Exit 1 (the counts still printed) when the PSP was unavailable or refused our key:
    those payouts stay pending for the reconciler."""
    run = _Run(client, settings.payout_minimum)
    run.counts["holds_released"] = release_holds(conn)
    unpaid: dict[str, set[uuid.UUID]] = {"no_payout_method": set(), "held": set()}
    due = _due(conn, settings.payout_minimum, unpaid)
    for seller_id, currency in due:  # one at a time until the PSP has answered one for sure
        run.pay(conn, seller_id, currency)
        if run.stopped or run.answered:
            break
    if run.answered and not run.stopped:
        with _Lanes(settings.database_url) as lanes:
            for seller_id, currency in due:
                if run.stopped:
                    break
                lanes.submit(functools.partial(run.pay, seller_id=seller_id, currency=currency))
    for _left in due:  # a stopped sweep still counts the sellers it could not pay
        pass
    counts = run.counts
    counts.update({reason: len(sellers) for reason, sellers in unpaid.items()})
    log.info("pay-sellers: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["ambiguous"] or counts["unauthorized"]:
        raise errors.PaymentProviderUnavailable(UNAVAILABLE, dict(counts))
    return dict(counts)


def _due(
    conn: db.Connection, minimum: int, unpaid: dict[str, set[uuid.UUID]]
) -> Iterator[tuple[uuid.UUID, str]]:
    """The (seller, currency) pairs to pay, a page at a time (no transaction held between pages);
    the sellers with enough available but no payout method, or a hold, are added to `unpaid`."""
    after: tuple[uuid.UUID, str] = (_ZERO, "")
    while True:
        params = {"minimum": minimum, "after_seller": after[0], "after_currency": after[1], "limit": PAGE}
        with conn.transaction():
            page = conn.execute(QUERIES["payable"], params).fetchall()
        for seller_id, currency, no_method, held, in_flight in page:
            after = (seller_id, currency)
            if no_method:
                unpaid["no_payout_method"].add(seller_id)
            elif held:
                unpaid["held"].add(seller_id)
            elif not in_flight:
                yield seller_id, currency
        if len(page) < PAGE:
            return


class _Run:
    """One sweep's payouts, possibly paid from several lanes at once: its counts and when it stops
    (the PSP refused our key, or gave 3 ambiguous answers in a row)."""

    def __init__(self, client: hyperswitch.Client, minimum: int) -> None:
        self.client = client
        self.minimum = minimum
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        self.answered = False  # the PSP gave a definitive answer: it can take several at once
        self.stopped = False
        self._unavailable = 0
        self._lock = threading.Lock()

    def pay(self, conn: db.Connection, seller_id: uuid.UUID, currency: str) -> None:
        if self.stopped:
            return
        payout, outcome = _create_or_skip(conn, seller_id, currency, self.minimum)
        sent = send(conn, self.client, payout) if payout is not None else None
        with self._lock:
            self.counts[outcome] += 1
            if sent is not None:
                self._count_answer(sent)

    def _count_answer(self, sent: str) -> None:
        self.counts[sent] += 1
        self.answered = self.answered or sent in ("submitted", "rejected")
        self._unavailable = self._unavailable + 1 if sent == "ambiguous" else 0
        if sent == "unauthorized":
            self.stopped = True  # every create would be refused the same: the reconciler settles it
        elif self._unavailable >= STOP_AFTER_UNAVAILABLE and not self.stopped:
            self.stopped = True
            log.warning("pay-sellers stopped early: %d ambiguous creates in a row", self._unavailable)


class _Lanes:
    """LANES threads, each with its own connection, paying payouts side by side: a PSP answer
    takes far longer than our transactions. At most 2 x LANES payouts wait; the first error of
    our own code is raised when the lanes are closed."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._local = threading.local()
        self._connections: list[db.Connection] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(LANES, thread_name_prefix="pay-sellers")
        self._room = threading.BoundedSemaphore(2 * LANES)
        self._failures: list[BaseException] = []

    def __enter__(self) -> _Lanes:
        return self

    def submit(self, task: Callable[[db.Connection], None]) -> None:
        self._room.acquire()
        future = self._pool.submit(self._run, task)
        future.add_done_callback(lambda _done: self._room.release())

    def _run(self, task: Callable[[db.Connection], None]) -> None:
        try:
            task(self._connection())
        except BaseException as exc:
            self._failures.append(exc)

    def _connection(self) -> db.Connection:
        conn: db.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = db.connect(self._database_url)
            self._connections.append(conn)
        return conn

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)
        for conn in self._connections:
            conn.close()
        if self._failures and exc_type is None:
            raise self._failures[0]


def _create_or_skip(
    conn: db.Connection, seller_id: uuid.UUID, currency: str, minimum: int
) -> tuple[Payout | None, str]:
    """The committed payout and `created`; or None and `skipped` (no longer due once claimed) or
    `errors` (a lock timeout or deadlock: the next sweep tries again)."""
    try:
        payout = create(conn, seller_id, currency, minimum)
    except psycopg.Error as exc:
        if not db.is_transient(exc) and not isinstance(exc, psycopg.errors.UniqueViolation):
            raise
        log.warning("pay-sellers: seller %s %s skipped this run: %s", seller_id, currency, exc)
        return None, "errors"
    return payout, "created" if payout is not None else "skipped"


def create(conn: db.Connection, seller_id: uuid.UUID, currency: str, minimum: int) -> Payout | None:
    """Claim one (seller, currency) and commit its payout: the row, `available → in_transit`, the
    transfers it carries. None when it is no longer due (another sweep paid it, a hold, a debt)."""
    with conn.transaction():
        claim = {"seller_id": seller_id, "currency": currency, "minimum": minimum}
        due = conn.execute(QUERIES["claim_seller"], claim).fetchone()
        if due is None:
            return None
        amount, customer_id, payout_method_id, payout_type = due
        payout_id = uuid.uuid4()
        params = {
            "id": payout_id,
            "seller_id": seller_id,
            "amount": amount,
            "currency": currency,
            "merchant_reference": hyperswitch.merchant_id("po", payout_id),
            "customer_id": customer_id,
            "payout_method_id": payout_method_id,
            "payout_type": payout_type,
        }
        payout = db.one(conn, Payout, QUERIES["insert_payout"], params)
        assert payout is not None
        ledger.post(conn, ledger.payout_created(payout_id, seller_id, currency, amount))
        conn.execute(QUERIES["carry_transfers"], {"payout_id": payout_id, **claim})
    metrics.payout(Status.PENDING)
    log.info("payout %s created for seller %s: %d %s", payout.id, seller_id, amount, currency)
    return payout


def send(conn: db.Connection, client: hyperswitch.Client, payout: Payout) -> str:
    """POST /payouts/create for a committed pending payout, outside any transaction of ours (or
    under the reconciler's claim). `submitted`, `rejected` (definitive: failed, money back),
    `ambiguous` or `unauthorized` (left pending, without a PSP id, for the reconciler)."""
    try:
        answer = client.create_payout(
            merchant_reference=payout.merchant_reference,
            amount=payout.amount,
            currency=payout.currency,
            customer_id=payout.customer_id,
            payout_method_id=payout.payout_method_id,
            payout_type=payout.payout_type,
            idempotency_key=str(payout.id),
            metadata={"seller_id": str(payout.seller_id), "payout_id": str(payout.id)},
        )
    except errors.HyperswitchUnauthorized as exc:
        log.error(
            "payout %s: the payment provider refused our API key (%s): check HYPERSWITCH_API_KEY;"
            " the payout stays pending for the reconciler",
            payout.id,
            exc,
        )
        return "unauthorized"
    except errors.HyperswitchUnavailable as exc:
        log.warning("payout %s: create was ambiguous, left for the reconciler: %s", payout.id, exc)
        return "ambiguous"
    except errors.HyperswitchRejected as exc:
        _reject(conn, payout, exc.message or exc.code)
        return "rejected"
    own = conn.info.transaction_status == pq.TransactionStatus.IDLE  # not inside the reconciler's
    with conn.transaction():
        if own:
            _no_commit_wait(conn)  # lost in a crash: the reconciler finds the payout by reference
        locked = lock(conn, payout.id)
        assert locked is not None  # rows are never deleted
        apply(conn, locked, psp_status(answer) or "pending", answer)
    return "submitted"


def _no_commit_wait(conn: db.Connection) -> None:
    conn.execute(QUERIES["no_commit_wait"])


def _reject(conn: db.Connection, payout: Payout, message: str) -> None:
    log.warning("payout %s rejected by the payment provider: %s", payout.id, message)
    with conn.transaction():
        locked = lock(conn, payout.id)
        assert locked is not None
        if locked.status == Status.PENDING:
            _fail(conn, locked, f"rejected by the payment provider: {message}")


# -- the PSP's results ------------------------------------------------------------------------------


def handle_payout(conn: db.Connection, event: events.Event, settings: Settings) -> str:
    """A payout_* webhook (or the reconciler's synthetic one): the object's status decides."""
    psp_id = events.object_id(event.data, "payout_id")
    reference = _reference(event.data)
    if psp_id is None and reference is None:
        return "error: missing payout_id"
    payout = lock_at_psp(conn, psp_id, reference)
    if payout is None:
        raise errors.UnknownObject("skipped: unknown payout")  # it may beat our own commit: retried
    status = psp_status(event.data) or EVENTS.get(event.event_type or "")
    if status is None:
        return "error: invalid payout status"
    return apply(conn, payout, status, event.data)


def psp_status(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status")
    return status if isinstance(status, str) and status in PSP_STATUSES else None


def _reference(obj: Mapping[str, Any]) -> str | None:
    """Our merchant_order_reference_id, when the object carries one of ours."""
    value = obj.get("merchant_order_reference_id")
    return value if isinstance(value, str) and _REFERENCE.fullmatch(value) else None


def apply(conn: db.Connection, payout: Payout, status: str, obj: Mapping[str, Any]) -> str:
    """The PSP's word on a locked payout, in the caller's transaction: its id adopted, the status
    recorded, then the move it makes; the delivery's processing_result."""
    psp_id = events.object_id(obj, "payout_id")
    if psp_id is not None and payout.hyperswitch_payout_id not in (None, psp_id):
        return _duplicate(conn, payout, psp_id)
    if _amount_differs(payout, obj):
        return _mismatch(conn, payout, obj)
    adopted = psp_id is not None and payout.hyperswitch_payout_id is None
    if adopted:
        conn.execute(QUERIES["adopt_psp_id"], {"id": payout.id, "psp_id": psp_id})
    conn.execute(QUERIES["record_psp_status"], {"id": payout.id, "psp_status": status})
    result = _move(conn, payout, status, _error_message(obj, status))
    if result.startswith("skipped") and adopted:
        return "ok"  # the PSP id is news: the reconciler and later webhooks find it by it
    return result


def _move(conn: db.Connection, payout: Payout, status: str, message: str) -> str:
    """The state machine. From pending, a final status has the effects of every step before it."""
    if status in PSP_NOT_FINAL:
        return f"skipped: payout not final ({status})"
    if payout.status in (Status.FAILED, Status.REVERSED):
        return f"skipped: payout already {payout.status}"
    if payout.status == Status.PAID:
        if status in PSP_REVERSED:
            _reverse(conn, payout, message)
            return "ok"
        if status in PSP_FAILED:
            _failed_after_paid(conn, payout, status)
        return "skipped: payout already paid"
    if status in PSP_FAILED:
        _fail(conn, payout, message)
        return "ok"
    _pay(conn, payout)
    if status in PSP_REVERSED:
        _reverse(conn, payout, message)
    return "ok"


# Where each end leads: the row's mark, the ledger movement, what becomes of the transfers it carries.
_ENDS: dict[Status, tuple[str, Callable[[uuid.UUID, uuid.UUID, str, int], ledger.Posting], str]] = {
    Status.PAID: ("mark_paid", ledger.payout_paid, "complete_transfers"),
    Status.FAILED: ("mark_failed", ledger.payout_failed, "free_transfers"),
    Status.REVERSED: ("mark_reversed", ledger.payout_reversed, "free_transfers"),
}


def _end(conn: db.Connection, payout: Payout, status: Status, message: str | None = None) -> None:
    mark, posting, transfers = _ENDS[status]
    conn.execute(QUERIES[mark], {"id": payout.id, "error_message": message})
    ledger.post(conn, posting(payout.id, payout.seller_id, payout.currency, payout.amount))
    conn.execute(QUERIES[transfers], {"payout_id": payout.id})
    metrics.payout(status)


def _pay(conn: db.Connection, payout: Payout) -> None:
    _end(conn, payout, Status.PAID)
    log.info(
        "payout %s paid: %d %s to seller %s", payout.id, payout.amount, payout.currency, payout.seller_id
    )


def _fail(conn: db.Connection, payout: Payout, message: str) -> None:
    _end(conn, payout, Status.FAILED, message)
    log.warning(
        "payout %s failed (%s): %d %s back to seller %s's available",
        payout.id,
        message,
        payout.amount,
        payout.currency,
        payout.seller_id,
    )


def _reverse(conn: db.Connection, payout: Payout, message: str) -> None:
    _end(conn, payout, Status.REVERSED, message)
    log.warning(
        "payout %s reversed: the bank returned %d %s; back to seller %s's available",
        payout.id,
        payout.amount,
        payout.currency,
        payout.seller_id,
    )


def _error_message(obj: Mapping[str, Any], status: str) -> str:
    for key in ("error_message", "error_code"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return events.storable(value[:500])
    return status


def _amount_differs(payout: Payout, obj: Mapping[str, Any]) -> bool:
    amount, currency = obj.get("amount"), obj.get("currency")
    wrong_amount = isinstance(amount, int) and not isinstance(amount, bool) and amount != payout.amount
    return wrong_amount or (isinstance(currency, str) and currency != payout.currency)


def _flag(
    conn: db.Connection, payout: Payout, kind: discrepancies.Kind, detail: str, subject: str = ""
) -> None:
    """A discrepancy about this payout, its amount and currency, for a person to resolve."""
    discrepancies.open_one(
        conn,
        kind,
        detail,
        payout_id=payout.id,
        subject=subject,
        amount=payout.amount,
        currency=payout.currency,
    )


def _mismatch(conn: db.Connection, payout: Payout, obj: Mapping[str, Any]) -> str:
    _flag(
        conn,
        payout,
        discrepancies.Kind.PAYOUT_AMOUNT_MISMATCH,
        f"payout {payout.id} of {payout.amount} {payout.currency}: the payment provider's payout"
        f" {obj.get('payout_id')} is for {obj.get('amount')!r} {obj.get('currency')!r}; nothing applied",
    )
    return "error: payout amount mismatch"


def _duplicate(conn: db.Connection, payout: Payout, psp_id: str) -> str:
    """A second PSP payout under our reference: one of them must not exist. Nothing moves."""
    _flag(
        conn,
        payout,
        discrepancies.Kind.PAYOUT_DUPLICATE_AT_PSP,
        f"payout {payout.id} is {payout.hyperswitch_payout_id} at the payment provider, which also"
        f" holds {psp_id} under our reference {payout.merchant_reference}: the seller may be paid twice",
        subject=psp_id,
    )
    return "skipped: another payment provider payout under our reference"


def _failed_after_paid(conn: db.Connection, payout: Payout, status: str) -> None:
    """The PSP contradicts itself (a reversal is how a bank returns a paid payout): a person reads
    the payout at the PSP and posts what really happened."""
    _flag(
        conn,
        payout,
        discrepancies.Kind.PAYOUT_FAILED_AFTER_PAID,
        f"payout {payout.id} ({payout.hyperswitch_payout_id}) was reported success, now {status}:"
        " kept paid, nothing moved",
    )


# -- for the reconciler ----------------------------------------------------------------------------


def adopt(conn: db.Connection, payout: Payout, obj: Mapping[str, Any]) -> None:
    """A payout the PSP holds and has not finished: keep its id and status, nothing moves."""
    apply(conn, payout, psp_status(obj) or "pending", obj)


def unknown_to_psp(conn: db.Connection, payout: Payout) -> None:
    """The PSP gave us an id it no longer knows: the money stays in transit until a person looks."""
    _flag(
        conn,
        payout,
        discrepancies.Kind.PAYOUT_UNKNOWN_TO_PSP,
        f"payout {payout.id} was created at the payment provider as {payout.hyperswitch_payout_id},"
        " which it now says does not exist; its money stays in transit",
    )


def duplicated_at_psp(conn: db.Connection, payout: Payout, found: Sequence[Mapping[str, Any]]) -> None:
    ids = ", ".join(str(p.get("payout_id")) for p in found)
    _flag(
        conn,
        payout,
        discrepancies.Kind.PAYOUT_DUPLICATE_AT_PSP,
        f"payout {payout.id}: the payment provider holds {len(found)} payouts ({ids}) under our"
        f" reference {payout.merchant_reference}: the seller may be paid twice; nothing applied",
    )


# -- ops: listing, holds, status --------------------------------------------------------------------


def listing(
    conn: db.Connection, *, seller_id: uuid.UUID | None = None, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """`veza-worker payouts [--seller S] [--status X]`: newest first."""
    if status is not None and status not in set(Status):
        raise errors.DomainError(f"unknown payout status {status!r}: one of {', '.join(Status)}")
    params = {"seller_id": seller_id, "status": status, "limit": limit}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(QUERIES["list_payouts"], params).fetchall()


def hold(conn: db.Connection, seller_id: uuid.UUID, reason: str) -> dict[str, Any]:
    """`hold-payouts SELLER_ID --reason TEXT`: no new payout for the seller until released (one
    in flight goes on); their earnings still become available."""
    if not reason.strip():
        raise errors.DomainError("holding payouts needs a non-empty --reason")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        opened = cur.execute(QUERIES["open_hold"], {"seller_id": seller_id, "reason": reason}).fetchone()
        if opened is None:
            held = cur.execute(QUERIES["find_hold"], {"seller_id": seller_id}).fetchone()
            assert held is not None
            raise errors.DomainError(
                f"payouts of seller {seller_id} are already held since {held['held_at']:%Y-%m-%d %H:%M}:"
                f" {held['reason']}"
            )
    log.warning("payouts of seller %s held: %s", seller_id, reason)
    return {"held": True, **opened}


def release(conn: db.Connection, seller_id: uuid.UUID) -> dict[str, Any]:
    """`release-payouts SELLER_ID`: the next sweep pays the seller again."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        closed = cur.execute(QUERIES["close_hold"], {"seller_id": seller_id}).fetchone()
    if closed is None:
        raise errors.DomainError(f"payouts of seller {seller_id} are not held")
    log.info("payouts of seller %s released (held since %s)", seller_id, closed["held_at"])
    return {"held": False, **closed}


def status(conn: db.Connection) -> dict[str, Any]:
    """`status`'s payouts section, in the caller's transaction."""
    gauge = gauges(conn)
    held = [row[0] for row in conn.execute(QUERIES["held_sellers"]).fetchall()]
    return {
        "held_sellers": held,
        "in_transit": gauge["in_transit"],
        "failed_last_day": gauge["failed_last_day"],
        "sellers_without_payout_method": gauge["sellers_without_payout_method"],
    }


def gauges(conn: db.Connection) -> dict[str, Any]:
    """In transit by currency and the oldest's age; failures of the last day; sellers the last
    sweep could not pay for want of a payout method. Partial indexes and sweep_runs only."""
    transit = conn.execute(QUERIES["in_transit"]).fetchall()
    failed = conn.execute(QUERIES["failed_last_day"]).fetchone()
    blocked = conn.execute(QUERIES["last_blocked"]).fetchone()
    assert failed is not None
    return {
        "in_transit": {currency: amount for currency, amount, _age in transit},
        "oldest_in_transit_seconds": max((age for _c, _a, age in transit), default=0.0),
        "failed_last_day": failed[0],
        "sellers_without_payout_method": blocked[0] if blocked else 0,
    }
