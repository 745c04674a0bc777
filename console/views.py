"""What each console page shows, read in one short read-only transaction per page.

The console owns these reads (views.sql); the numbers other programs already compute come from
their owners: `ops.status` for the overview, `ledger.statement` for a seller. Every list is
bounded, so a page costs the same at a million rows as at ten (bench/console).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from console import actions
from veza_worker import db, ledger, ops, payouts
from veza_worker.settings import Settings

QUERIES = db.load_queries(__name__)

INBOX_KINDS = ("discrepancy", "refund", "payout", "delivery")
INBOX_LIMIT = 100
DISPUTES_LIMIT = 200
PAYOUTS_LIMIT = 100
SELLER_PAYOUTS_LIMIT = 50
MAX_PAYLOAD_CHARS = 65_536

# Keys whose values the console never shows: the PSP's client secrets and keys, tokens, signatures.
_SECRET_KEY = re.compile(r"secret|api_?key|publishable_key|password|token|signature|authorization", re.I)
_SECRET_VALUE = re.compile(r"\w+_secret_\w+")  # a client secret is <payment_id>_secret_<random>
_SECRET_PAIR = re.compile(
    r'("[A-Za-z0-9_]*(?:secret|api_?key|publishable_key|password|token|signature|authorization)'
    r'[A-Za-z0-9_]*"\s*:\s*)"(?:[^"\\]|\\.)*"',
    re.I,
)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Event:
    """One line of a timeline: when, what, and the object it is about."""

    at: datetime
    what: str
    detail: str = ""
    kind: str = ""  # payment, refund, dispute, delivery, ledger, license, invoice, subscription
    ids: dict[str, Any] = field(default_factory=dict)


def _fetch(conn: db.Connection, name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(QUERIES[name], params).fetchall()


def _one(conn: db.Connection, name: str, **params: Any) -> dict[str, Any] | None:
    found = _fetch(conn, name, **params)
    return found[0] if found else None


# -- overview ---------------------------------------------------------------------------------------


def overview(conn: db.Connection, settings: Settings) -> dict[str, Any]:
    """`veza-worker status`, plus how many rows wait for a person and the ledger audit's last word."""
    document, healthy = ops.status(conn, settings)
    with conn.transaction():
        counts = _one(conn, "inbox_counts") or {}
        audit_run = _one(conn, "last_audit_run")
    return {
        "status": document,
        "healthy": healthy,  # no sweep overdue and nothing in the inbox (open discrepancies included)
        "inbox_counts": counts,
        "needs_a_human": sum(counts.values()),
        "audit": audit_run,
    }


# -- inbox ------------------------------------------------------------------------------------------


def inbox(conn: db.Connection, kind: str) -> dict[str, Any]:
    """What waits for a person, oldest first; `kind` '' for all of them."""
    kind = kind if kind in INBOX_KINDS else ""
    with conn.transaction():
        items = _fetch(conn, "inbox", kind=kind, limit=INBOX_LIMIT)
        counts = _one(conn, "inbox_counts") or {}
    return {"items": items, "counts": counts, "kind": kind, "kinds": INBOX_KINDS, "limit": INBOX_LIMIT}


# -- order ------------------------------------------------------------------------------------------


def order(conn: db.Connection, order_id: uuid.UUID) -> dict[str, Any] | None:
    """An order and everything that happened to it, as tables and as one timeline."""
    with conn.transaction():
        found = _one(conn, "order", order_id=order_id)
        if found is None:
            return None
        page: dict[str, Any] = {
            "order": found,
            "items": _fetch(conn, "order_items", order_id=order_id),
            "refunds": _fetch(conn, "order_refunds", order_id=order_id),
            "disputes": _fetch(conn, "order_disputes", order_id=order_id),
            "transfers": _fetch(conn, "order_transfers", order_id=order_id),
            "deliveries": _deliveries(conn, [found["payment_id"]]),
            **_money_of(conn, order_id=order_id),
        }
    page["timeline"] = order_timeline(page)
    return page


def _money_of(
    conn: db.Connection,
    *,
    order_id: uuid.UUID | None = None,
    invoice_ids: list[uuid.UUID] | None = None,
    payout_id: uuid.UUID | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The ledger postings and the discrepancies about an order, invoices or a payout."""
    about = {"order_id": order_id, "invoice_ids": invoice_ids or [], "payout_id": payout_id}
    return {
        "postings": _fetch(conn, "postings", **about),
        "discrepancies": _fetch(conn, "discrepancies_of", **about),
    }


def _deliveries(conn: db.Connection, payment_ids: list[str | None]) -> list[dict[str, Any]]:
    wanted = [p for p in payment_ids if p]
    return _fetch(conn, "payment_deliveries", payment_ids=wanted) if wanted else []


def order_timeline(page: dict[str, Any]) -> list[Event]:
    """Every dated fact of an order's page, oldest first."""
    o = page["order"]
    events = [Event(o["created_at"], "order created", f"{o['status']} now", "order")]
    if o["payment_created_at"]:
        events.append(
            Event(o["payment_created_at"], "payment created", "", "payment", {"q": o["payment_id"]})
        )
    if o["completed_at"]:
        events.append(Event(o["completed_at"], "payment succeeded: order completed", "", "payment"))
    if o["hold_released_at"]:
        events.append(Event(o["hold_released_at"], "sellers' earnings released from hold", "", "ledger"))
    for item in page["items"]:
        if item["licensed_at"]:
            events.append(Event(item["licensed_at"], "license issued", "", "license", {"item": item["id"]}))
        if item["revoked_at"]:
            events.append(Event(item["revoked_at"], "license revoked", "", "license", {"item": item["id"]}))
    events += _refund_events(page["refunds"])
    events += _dispute_events(page["disputes"])
    events += _common_events(page)
    return sorted(events, key=lambda e: e.at)


def _refund_events(refunds: list[dict[str, Any]]) -> list[Event]:
    events = []
    for r in refunds:
        label = "automatic refund" if r["automatic"] else "refund"
        ids = {"refund": r["id"]}
        events.append(Event(r["created_at"], f"{label} requested", _amount(r), "refund", ids))
        if r["submitted_at"]:
            events.append(Event(r["submitted_at"], f"{label} sent to the PSP", "", "refund", ids))
        if r["succeeded_at"]:
            events.append(Event(r["succeeded_at"], f"{label} succeeded", _amount(r), "refund", ids))
        if r["failed_at"]:
            events.append(Event(r["failed_at"], f"{label} failed", r["error_message"] or "", "refund", ids))
    return events


def _dispute_events(disputes: list[dict[str, Any]]) -> list[Event]:
    events = []
    for d in disputes:
        ids = {"dispute": d["id"]}
        events.append(Event(d["created_at"], "dispute opened", _amount(d), "dispute", ids))
        if d["closed_at"]:
            events.append(Event(d["closed_at"], f"dispute closed: {d['status']}", "", "dispute", ids))
    return events


def _common_events(page: dict[str, Any]) -> list[Event]:
    """Deliveries, postings and discrepancies: what orders and subscriptions both have."""
    events = [
        Event(
            d["received_at"],
            f"delivery {d['event_type'] or '?'}",
            d["processing_result"],
            "delivery",
            {"delivery": d["id"]},
        )
        for d in page["deliveries"]
    ]
    for p in page["postings"]:
        events.append(Event(p["created_at"], f"ledger: {p['kind']}", _legs(p["entries"]), "ledger"))
    for d in page["discrepancies"]:
        events.append(Event(d["created_at"], f"discrepancy opened: {d['kind']}", d["detail"], "discrepancy"))
        if d["resolved_at"]:
            events.append(
                Event(
                    d["resolved_at"],
                    f"discrepancy resolved by {d['resolved_by']}",
                    d["resolution"] or "",
                    "discrepancy",
                )
            )
    return events


def _amount(row: dict[str, Any]) -> str:
    return f"{money(row['amount'], row['currency'])}"


def _legs(entries: list[dict[str, Any]] | None) -> str:
    return ", ".join(
        f"{e['account']} {'+' if e['amount'] > 0 else ''}{money(e['amount'], e['currency'])}"
        for e in entries or []
    )


# -- subscription -----------------------------------------------------------------------------------


def subscription(conn: db.Connection, subscription_id: uuid.UUID) -> dict[str, Any] | None:
    """A subscription, its plan, its invoices and what each invoice's money did."""
    with conn.transaction():
        found = _one(conn, "subscription", subscription_id=subscription_id)
        if found is None:
            return None
        invoices = _fetch(conn, "subscription_invoices", subscription_id=subscription_id)
        invoice_ids = [i["id"] for i in invoices]
        page: dict[str, Any] = {
            "subscription": found,
            "invoices": invoices,
            "refunds": _fetch(conn, "invoice_refunds", invoice_ids=invoice_ids),
            "disputes": _fetch(conn, "invoice_disputes", invoice_ids=invoice_ids),
            **_money_of(conn, invoice_ids=invoice_ids),
            "deliveries": _deliveries(conn, [i["payment_id"] for i in invoices]),
            "others": [
                s
                for s in _fetch(conn, "user_subscriptions", user_id=found["user_id"])
                if s["id"] != subscription_id
            ],
        }
    page["timeline"] = subscription_timeline(page)
    return page


def subscription_timeline(page: dict[str, Any]) -> list[Event]:
    s = page["subscription"]
    events = [Event(s["created_at"], "subscription created", f"plan {s['plan_name']}", "subscription")]
    if s["canceled_at"]:
        events.append(Event(s["canceled_at"], "subscription canceled", "", "subscription"))
    if s["past_due_since"]:
        events.append(Event(s["past_due_since"], "renewal failed: past due", "", "subscription"))
    for i in page["invoices"]:
        ids = {"invoice": i["id"]}
        events.append(
            Event(i["created_at"], f"invoice created (attempt {i['attempt']})", _amount(i), "invoice", ids)
        )
        if i["paid_at"]:
            events.append(Event(i["paid_at"], "invoice paid", _amount(i), "invoice", ids))
        if i["failed_at"]:
            events.append(Event(i["failed_at"], "invoice failed", "", "invoice", ids))
    events += _refund_events(page["refunds"])
    events += _dispute_events(page["disputes"])
    events += _common_events(page)
    return sorted(events, key=lambda e: e.at)


# -- seller, user, disputes, delivery ---------------------------------------------------------------


def seller(conn: db.Connection, seller_id: uuid.UUID) -> dict[str, Any] | None:
    """A seller's balances and statement (ledger.statement, as `seller-statement` prints it), payout
    hold, payouts (`payouts --seller`) and transfers; None for an id nothing names as a seller."""
    with conn.transaction():
        known = conn.execute(QUERIES["seller_known"], {"seller_id": seller_id}).fetchone()
        if not (known and known[0]):
            return None
        holds = _fetch(conn, "seller_holds", seller_id=seller_id)
        return {
            "seller_id": seller_id,
            "statement": ledger.statement(conn, seller_id),
            "held": next((h for h in holds if h["released_at"] is None), None),
            "holds": holds,
            "payout_method": _one(conn, "seller_payout_method", seller_id=seller_id),
            "payouts": payouts.listing(conn, seller_id=seller_id, limit=SELLER_PAYOUTS_LIMIT),
            "transfers": _fetch(conn, "seller_transfers", seller_id=seller_id),
            "history": actions.actions_on(conn, "seller", str(seller_id)),
        }


# -- payouts ----------------------------------------------------------------------------------------


def payout_list(conn: db.Connection, status: str) -> dict[str, Any]:
    """`veza-worker payouts [--status X]` as a page: newest first; `status` '' for all."""
    status = status if status in set(payouts.Status) else ""
    found = payouts.listing(conn, status=status or None, limit=PAYOUTS_LIMIT)
    return {"payouts": found, "status": status, "statuses": list(payouts.Status), "limit": PAYOUTS_LIMIT}


def payout(conn: db.Connection, payout_id: uuid.UUID) -> dict[str, Any] | None:
    """One payout: its PSP ids and answer, the transfers it carries, its postings and discrepancies."""
    with conn.transaction():
        found = _one(conn, "payout", payout_id=payout_id)
        if found is None:
            return None
        return {
            "payout": found,
            "transfers": _fetch(conn, "payout_transfers", payout_id=payout_id),
            **_money_of(conn, payout_id=payout_id),
        }


def user(conn: db.Connection, user_id: uuid.UUID) -> dict[str, Any]:
    with conn.transaction():
        return {
            "user_id": user_id,
            "subscriptions": _fetch(conn, "user_subscriptions", user_id=user_id),
            "orders": _fetch(conn, "user_orders", user_id=user_id),
        }


def disputes(conn: db.Connection) -> dict[str, Any]:
    """Open disputes, nearest challenge deadline first."""
    with conn.transaction():
        found = _fetch(conn, "open_disputes", limit=DISPUTES_LIMIT)
        count = conn.execute(QUERIES["open_disputes_count"]).fetchone()
    return {"disputes": found, "count": count[0] if count else 0, "limit": DISPUTES_LIMIT}


def delivery(conn: db.Connection, log_id: int) -> dict[str, Any] | None:
    """One stored delivery, its body redacted: the console shows no client_secret, key or signature."""
    with conn.transaction():
        found = _one(conn, "delivery", log_id=log_id)
    if found is None:
        return None
    return {**found, "payload": redact_payload(found["payload"])}


def find(conn: db.Connection, query: str) -> list[tuple[str, str]]:
    """(kind, id) of every page an id (ours, the PSP's, a user's, a seller's) leads to."""
    query = query.strip()
    if not query or len(query) > 200:
        return []
    params = {"uuid": _as_uuid(query), "text": query, "number": _as_bigint(query)}
    with conn.transaction():
        found = conn.execute(QUERIES["find"], params).fetchall()
    return list(dict.fromkeys((kind, target) for kind, target in found))


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _as_bigint(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) < 2**63 else None


# -- rendering helpers ------------------------------------------------------------------------------


def redact_payload(payload: str) -> str:
    """The body for a person to read: pretty JSON without secrets; a body that is not JSON keeps
    its text, secrets cut out all the same. Long bodies are cut (the row keeps them whole)."""
    try:
        document = json.loads(payload)
    except ValueError:
        text = _SECRET_VALUE.sub(REDACTED, _SECRET_PAIR.sub(rf'\1"{REDACTED}"', payload))
    else:
        text = json.dumps(_redact(document), indent=2, ensure_ascii=False)
    if len(text) > MAX_PAYLOAD_CHARS:
        return text[:MAX_PAYLOAD_CHARS] + f"\n… ({len(text) - MAX_PAYLOAD_CHARS} more characters)"
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) and v is not None else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


# ISO 4217 currencies whose minor unit is not a hundredth.
_EXPONENTS = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def money(amount: int | None, currency: str | None) -> str:
    """Minor units as a person reads them: 4599 USD → 45.99 USD."""
    if amount is None:
        return ""
    exponent = _EXPONENTS.get(currency or "", 2)
    sign = "-" if amount < 0 else ""
    whole, minor = divmod(abs(amount), 10**exponent)
    text = f"{whole:,}" + (f".{minor:0{exponent}d}" if exponent else "")
    return f"{sign}{text} {currency or ''}".strip()
