"""A fake Hyperswitch v1 at its HTTP boundary: the one fake the tests allow.

It answers the calls veza-worker makes the way the real server does (api-key check, request
bodies validated against the OpenAPI spec with unknown fields refused, 400 HE_01 for a repeated
merchant id without replaying, 404 HE_02 for an unknown object), and it can send signed webhooks
like the real one. Tests script failures; a person can run it for the README walk-through:

    FAKE_HYPERSWITCH_WEBHOOK_URL=http://127.0.0.1:8000/webhooks/hyperswitch \\
    FAKE_HYPERSWITCH_WEBHOOK_SECRET=dev_webhook_secret FAKE_HYPERSWITCH_API_KEY=snd_dev \\
    .venv/bin/uvicorn tests.fake_hyperswitch:app --port 8081
"""

from __future__ import annotations

import asyncio
import base64
import json
import operator
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tests import openapi
from veza_worker import events

MERCHANT = "merchant_veza_fake"


@dataclass
class Failure:
    """A scripted answer for the next call to one route: a status and error, or a hang."""

    status: int = 500
    code: str = "HE_00"
    message: str = "Something went wrong"
    hang: float = 0.0
    shape: str = "nested"  # nested {"error": {...}} | string {"error": "..."}
    acted: bool = False  # the PSP creates the object, then answers with this failure


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


@dataclass
class FakeHyperswitch:
    api_key: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    unlisted: set[str] = field(default_factory=set)  # disputes GET /disputes/list leaves out (paged out)
    # Saved payment methods (pm_...) → the customer they belong to.
    payment_methods: dict[str, str] = field(default_factory=dict)
    payouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Stored payout methods (a seller's bank account) → the customer they belong to.
    payout_methods: dict[str, str] = field(default_factory=dict)
    # What the next payout creates answer with (then "pending"): pending, success, failed...
    payout_outcomes: list[str] = field(default_factory=list)
    # What the next off-session charges come back as (then "succeeded"): succeeded, failed,
    # requires_customer_action (the bank wants 3DS), processing.
    off_session_outcomes: list[str] = field(default_factory=list)
    # A misconfigured deployment as our API calls see it: "he_02" (an API key of another
    # merchant account: every object unknown) or "html_404" (a wrong path in HYPERSWITCH_URL).
    misconfigured: str | None = None
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # spec violations in our requests
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    # Runs (in a thread) after a create is stored and before it is answered: "the webhook was faster".
    before_reply: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    ordered: dict[str, Any] = field(default_factory=dict)  # the lists' order, cached (_ordered)

    def fail_next(self, route: str, failure: Failure | None = None) -> None:
        """Answer the next `route` call ("POST /refunds", "GET /payments") with `failure`."""
        self.failures.setdefault(route, []).append(failure or Failure())

    def calls_to(self, method: str, path_prefix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def save_payment_method(self, customer_id: str) -> str:
        method = f"pm_{secrets.token_hex(10)}"
        self.payment_methods[method] = customer_id
        return method

    def save_payout_method(self, customer_id: str) -> str:
        """A seller saved a bank account: its stored payout method."""
        method = f"pm_{secrets.token_hex(10)}"
        self.payout_methods[method] = customer_id
        return method

    def payouts_with_reference(self, reference: str) -> list[dict[str, Any]]:
        return [p for p in self.payouts.values() if p.get("merchant_order_reference_id") == reference]


def _error(status: int, code: str, message: str, shape: str = "nested") -> JSONResponse:
    if shape == "string":
        return JSONResponse({"error": message}, status_code=status)
    error_type = "invalid_request" if status < 500 else "server_not_available"
    return JSONResponse({"error": {"type": error_type, "message": message, "code": code}}, status_code=status)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


timestamp = _now  # how the fake writes `created`: for objects a test or a benchmark seeds directly


async def _guard(
    request: Request,
    fake: FakeHyperswitch,
    route: str,
    schema: str | None = None,
    *,
    query: AbstractSet[str] | None = None,
) -> tuple[Any, Response | None]:
    """Record the call, check the api-key, play a scripted failure, refuse a query field not in
    `query` (when given), check the body against the spec's `schema`; the parsed body, and the
    response that refuses it if any."""
    body = json.loads(await request.body() or b"null")
    fake.calls.append(Call(request.method, request.url.path, dict(request.headers), body, request.url.query))
    if request.headers.get("api-key") != fake.api_key:
        return body, _error(401, "IR_01", "API key not provided or invalid API key used")
    if fake.misconfigured == "he_02":
        return body, _error(404, "HE_02", "Requested resource not found")
    if fake.misconfigured == "html_404":
        return body, HTMLResponse("<html><body><h1>404 Not Found</h1></body></html>", status_code=404)
    scripted = fake.failures.get(route)
    if scripted and not scripted[0].acted:
        return body, await _fail(scripted.pop(0))
    if query is not None and set(request.query_params) - query:
        return body, _unknown_field(set(request.query_params) - query)
    return body, None if schema is None else _invalid(fake, schema, body)


def _unknown_field(unknown: set[str]) -> Response:
    """The server's answer to a field its type does not declare (serde's deny_unknown_fields)."""
    return _error(400, "IR_06", f"Json deserialize error: unknown field `{sorted(unknown)[0]}`")


async def _fail(failure: Failure) -> Response:
    if failure.hang:
        await asyncio.sleep(failure.hang)
    return _error(failure.status, failure.code, failure.message, failure.shape)


async def _reply(
    fake: FakeHyperswitch, route: str, obj: dict[str, Any], *, webhook: str | None = None
) -> Response:
    """The object, unless a failure was scripted for after the PSP acted; `webhook` is sent once
    the answer has gone (the real server sends it on the status change, in its own time)."""
    hook = fake.before_reply.get(route)
    if hook is not None:
        await anyio.to_thread.run_sync(hook, obj)
    background = BackgroundTask(_send_webhook, fake, webhook, dict(obj)) if webhook else None
    scripted = fake.failures.get(route)
    if scripted and scripted[0].acted:
        failed = await _fail(scripted.pop(0))
        failed.background = background
        return failed
    return JSONResponse(obj, background=background)


def _invalid(fake: FakeHyperswitch, schema: str, body: Any) -> Response | None:
    problems = openapi.errors(schema, body)
    if not problems:
        return None
    fake.violations.extend(problems)
    return _error(400, "IR_06", f"Json deserialize error: {problems[0]}")


async def create_payment(request: Request) -> Response:
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /payments", "PaymentsCreateRequest")
    if refused is None:
        refused = _invalid_recurring(fake, body)
    if refused is not None:
        return refused
    payment_id = body.get("payment_id") or f"pay_{secrets.token_hex(13)}"
    if payment_id in fake.payments:
        return _error(400, "HE_01", "The payment with the specified payment_id already exists in our records")
    customer_id = (body.get("customer") or {}).get("id")
    fake.payments[payment_id] = {
        "payment_id": payment_id,
        "merchant_id": MERCHANT,
        "processor_merchant_id": MERCHANT,
        "status": "requires_payment_method",
        "amount": body["amount"],
        "net_amount": body["amount"],
        "amount_capturable": body["amount"],
        "amount_received": None,
        "currency": body["currency"],
        "client_secret": f"{payment_id}_secret_{secrets.token_hex(10)}",
        "payment_method": "card",
        "attempt_count": 1,
        "metadata": body.get("metadata"),
        "description": body.get("description"),
        "customer_id": customer_id,
        "setup_future_usage": body.get("setup_future_usage"),
        "off_session": body.get("off_session"),
        "payment_method_id": None,
        "created": _now(),
        "error_code": None,
        "error_message": None,
    }
    payment = fake.payments[payment_id]
    if body.get("off_session"):
        outcome = fake.off_session_outcomes.pop(0) if fake.off_session_outcomes else "succeeded"
        payment["payment_method_id"] = body["recurring_details"]["data"]
        _charge(payment, outcome)
        if payment["status"] in ("succeeded", "failed"):  # the real server also sends the webhook
            return await _reply(fake, "POST /payments", payment, webhook=_payment_event(payment["status"]))
    return await _reply(fake, "POST /payments", payment)


def _invalid_recurring(fake: FakeHyperswitch, body: Any) -> Response | None:
    """The server's own checks (IR_16) on a merchant-initiated charge, and a customer for saving."""
    customer_id = (body.get("customer") or {}).get("id")
    if body.get("setup_future_usage") == "off_session" and not customer_id:
        return _error(400, "IR_04", "Missing required param: customer_id")
    recurring = body.get("recurring_details")
    if recurring is None:
        return None
    if body.get("confirm") is not True or body.get("off_session") is not True:
        return _error(400, "IR_16", "`confirm` and `off_session` must be true for a recurring payment")
    owner = fake.payment_methods.get(recurring.get("data"))
    if owner is None or owner != customer_id:
        return _error(400, "IR_16", "payment method does not belong to this customer")
    return None


def _charge(payment: dict[str, Any], outcome: str) -> None:
    payment["status"] = outcome
    if outcome == "succeeded":
        payment["amount_received"] = payment["amount"]
        payment["amount_capturable"] = 0
    elif outcome == "failed":
        payment["error_code"], payment["error_message"] = "card_declined", "Your card was declined"


def _payment_event(status: str) -> str:
    return {"succeeded": "payment_succeeded", "failed": "payment_failed"}.get(status, "payment_cancelled")


async def cancel_payment(request: Request) -> Response:
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /payments/cancel", "PaymentsCancelRequest")
    if refused is not None:
        return refused
    payment = fake.payments.get(request.path_params["payment_id"])
    if payment is None:
        return _error(404, "HE_02", "Payment does not exist in our records")
    if payment["status"] in FINAL:
        message = f"This Payment could not be cancel because it has a status of {payment['status']}"
        return _error(400, "IR_14", message)
    payment["status"] = "cancelled"
    payment["cancellation_reason"] = body.get("cancellation_reason")
    return await _reply(fake, "POST /payments/cancel", payment, webhook="payment_cancelled")


FINAL = {"succeeded", "failed", "cancelled", "cancelled_post_capture", "partially_captured", "expired"}


async def cancel_post_capture(request: Request) -> Response:
    """POST /payments/{id}/cancel_post_capture: the captured money goes back (succeeded or
    partially captured payments only); the webhook follows."""
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(
        request, fake, "POST /payments/cancel_post_capture", "PaymentsCancelPostCaptureRequest"
    )
    if refused is not None:
        return refused
    payment = fake.payments.get(request.path_params["payment_id"])
    if payment is None:
        return _error(404, "HE_02", "Payment does not exist in our records")
    if payment["status"] not in ("succeeded", "partially_captured"):
        message = (
            f"This Payment could not be cancel_post_capture because it has a status of {payment['status']}"
        )
        return _error(400, "IR_14", message)
    cancel_after_capture(fake, payment["payment_id"], body.get("cancellation_reason"))
    return await _reply(
        fake, "POST /payments/cancel_post_capture", payment, webhook="payment_cancelled_post_capture"
    )


def cancel_after_capture(fake: FakeHyperswitch, payment_id: str, reason: str | None = None) -> dict[str, Any]:
    """The payment as the PSP holds it once cancelled after capture (no webhook sent)."""
    payment = fake.payments[payment_id]
    payment.update(status="cancelled_post_capture", cancellation_reason=reason, amount_capturable=0)
    return payment


async def create_refund(request: Request) -> Response:
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /refunds", "RefundRequest")
    if refused is not None:
        return refused
    payment = fake.payments.get(body["payment_id"])
    if payment is None:
        return _error(404, "HE_02", "Payment does not exist in our records")
    refund_id = body.get("refund_id") or f"ref_{secrets.token_hex(13)}"
    if refund_id in fake.refunds:
        return _error(400, "HE_01", "Duplicate refund request. Refund already attempted with the refund ID")
    if payment["status"] != "succeeded":
        message = f"This Payment could not be refund because it has a status of {payment['status']}."
        return _error(400, "IR_14", message)
    amount = body.get("amount") or payment["amount_received"] or payment["amount"]
    if amount <= 0:
        return _error(400, "IR_06", "Refund amount must be greater than zero")
    if refunded_so_far(fake, payment["payment_id"]) + amount > (
        payment["amount_received"] or payment["amount"]
    ):
        return _error(400, "IR_13", "The refund amount exceeds the amount captured")
    fake.refunds[refund_id] = new_refund(payment, refund_id, amount, body.get("reason"), body.get("metadata"))
    return await _reply(fake, "POST /refunds", fake.refunds[refund_id])


def refunded_so_far(fake: FakeHyperswitch, payment_id: str) -> int:
    """What counts against the captured amount: every refund of the payment not failed (pending
    and review ones too, as the server counts them)."""
    return sum(
        r["amount"]
        for r in fake.refunds.values()
        if r["payment_id"] == payment_id and r["status"] != "failed"
    )


def new_refund(
    payment: dict[str, Any], refund_id: str, amount: int, reason: Any = None, metadata: Any = None
) -> dict[str, Any]:
    return {
        "refund_id": refund_id,
        "payment_id": payment["payment_id"],
        "amount": amount,
        "currency": payment["currency"],
        "status": "pending",
        "reason": reason,
        "metadata": metadata,
        "error_message": None,
        "error_code": None,
        "created_at": _now(),
        "updated_at": _now(),
        "connector": "fauxpay",
    }


# -- the fake's own controls: settle an object and send its webhook ------------------------------


def settle_payment(fake: FakeHyperswitch, payment_id: str, outcome: str) -> dict[str, Any]:
    """The customer finished (or abandoned) an on-session payment; one that asked to save its
    method for off-session use now carries the saved method's id."""
    payment = fake.payments[payment_id]
    _charge(payment, outcome)
    if outcome == "succeeded" and payment.get("setup_future_usage") == "off_session":
        payment["payment_method_id"] = payment["payment_method_id"] or fake.save_payment_method(
            payment["customer_id"]
        )
    return payment


def settle_refund(
    fake: FakeHyperswitch, refund_id: str, outcome: str, error_message: str | None = None
) -> Any:
    refund = fake.refunds[refund_id]
    refund.update(status=outcome, error_message=error_message, updated_at=_now())
    return refund


def webhook_body(event_type: str, obj: dict[str, Any]) -> bytes:
    """A delivery in Hyperswitch's envelope, with a fresh event_id."""
    content_type = {
        "refund": "refund_details",
        "mandate": "mandate_details",
        "dispute": "dispute_details",
        "payout": "payout_details",
    }.get(event_type.split("_")[0], "payment_details")
    envelope = {
        "merchant_id": MERCHANT,
        "event_id": f"evt_{uuid.uuid4().hex}",
        "event_type": event_type,
        "content": {"type": content_type, "object": obj},
        "timestamp": _now(),
    }
    return json.dumps(envelope).encode()


async def control(request: Request) -> Response:
    """POST /_fake/{payments|refunds}/{id}/{succeeded|failed|cancelled}: settle it, send its webhook."""
    fake: FakeHyperswitch = request.app.state.fake
    kind, object_id, outcome = (request.path_params[k] for k in ("kind", "object_id", "outcome"))
    store = fake.payments if kind == "payments" else fake.refunds
    if object_id not in store:
        return _error(404, "HE_02", f"{kind} {object_id} does not exist")
    if kind == "payments":
        obj = settle_payment(fake, object_id, outcome)
        event_type = _payment_event(outcome)
    else:
        obj = settle_refund(fake, object_id, outcome, None if outcome == "succeeded" else "card expired")
        event_type = f"refund_{outcome}"
    delivered = await _send_webhook(fake, event_type, obj)
    return JSONResponse({"object": obj, "event_type": event_type, "webhook_status": delivered})


def revoke_mandate(fake: FakeHyperswitch, payment_method_id: str) -> dict[str, Any]:
    """The customer revoked the mandate behind a saved method (MandateResponse)."""
    fake.payment_methods.pop(payment_method_id, None)
    return {
        "mandate_id": f"man_{secrets.token_hex(10)}",
        "status": "revoked",
        "payment_method_id": payment_method_id,
        "payment_method": "card",
        "payment_method_type": "credit",
    }


def refund_from_dashboard(
    fake: FakeHyperswitch, payment_id: str, amount: int, outcome: str
) -> dict[str, Any]:
    """Support staff refund a payment in the Hyperswitch dashboard: a refund id we never made."""
    refund_id = f"ref_{secrets.token_hex(10)}"
    fake.refunds[refund_id] = new_refund(
        fake.payments[payment_id], refund_id, amount, "requested_by_customer"
    )
    settle_refund(fake, refund_id, outcome, None if outcome == "succeeded" else "card expired")
    return fake.refunds[refund_id]


async def dashboard_refund(request: Request) -> Response:
    """POST /_fake/payments/{id}/dashboard_refund?amount=N&outcome=succeeded: refund it as staff
    would in the dashboard, and send its webhook."""
    fake: FakeHyperswitch = request.app.state.fake
    payment = fake.payments.get(request.path_params["payment_id"])
    if payment is None:
        return _error(404, "HE_02", "Payment does not exist in our records")
    amount = int(request.query_params.get("amount") or payment["amount"])
    outcome = request.query_params.get("outcome", "succeeded")
    refund = refund_from_dashboard(fake, payment["payment_id"], amount, outcome)
    delivered = await _send_webhook(fake, f"refund_{outcome}", refund)
    return JSONResponse({"object": refund, "event_type": f"refund_{outcome}", "webhook_status": delivered})


def dispute(
    fake: FakeHyperswitch,
    payment_id: str,
    status: str,
    *,
    dispute_id: str | None = None,
    amount: str | None = None,
) -> dict[str, Any]:
    """Open a dispute on a payment, or move one (DisputeResponse; its amount is a string)."""
    dispute_id = dispute_id or f"dp_{secrets.token_hex(10)}"
    payment = fake.payments[payment_id]
    current = fake.disputes.setdefault(
        dispute_id,
        {
            "dispute_id": dispute_id,
            "payment_id": payment_id,
            "attempt_id": f"{payment_id}_1",
            "amount": amount or str(payment["amount"]),
            "currency": payment["currency"],
            "dispute_stage": "dispute",
            "dispute_status": status,
            "connector": "fauxpay",
            "connector_status": status.removeprefix("dispute_"),
            "connector_dispute_id": f"du_{secrets.token_hex(8)}",
            "connector_reason": "product_not_received",
            "connector_reason_code": None,
            "challenge_required_by": "2026-12-20T23:59:59.000Z",
            "connector_created_at": _now(),
            "connector_updated_at": _now(),
            "created_at": _now(),
            "profile_id": "pro_fake",
            "merchant_connector_id": "mca_fake",
            "is_already_refunded": False,
        },
    )
    current.update(
        dispute_status=status, connector_status=status.removeprefix("dispute_"), connector_updated_at=_now()
    )
    return current


_DISPUTE_LIST_QUERY = frozenset({"limit", "offset", "dispute_status", "dispute_stage", "reason", "connector"})


async def list_disputes(request: Request) -> Response:
    """A bare array; like the server's DisputeListGetConstraints, unknown query fields are refused."""
    fake: FakeHyperswitch = request.app.state.fake
    _, refused = await _guard(request, fake, "GET /disputes/list", query=_DISPUTE_LIST_QUERY)
    if refused is not None:
        return refused
    limit = int(request.query_params.get("limit", "100"))
    listed = [d for d in fake.disputes.values() if d["dispute_id"] not in fake.unlisted]
    return JSONResponse(listed[:limit])


async def dispute_control(request: Request) -> Response:
    """POST /_fake/payments/{id}/dispute?status=dispute_opened[&dispute_id=..][&webhook=false]"""
    fake: FakeHyperswitch = request.app.state.fake
    status = request.query_params.get("status", "dispute_opened")
    obj = dispute(
        fake, request.path_params["payment_id"], status, dispute_id=request.query_params.get("dispute_id")
    )
    delivered = None
    if request.query_params.get("webhook", "true") != "false":
        delivered = await _send_webhook(fake, status, dict(obj))
    return JSONResponse({"object": obj, "event_type": status, "webhook_status": delivered})


async def add_payment_methods(request: Request) -> Response:
    """POST /_fake/payment_methods [[pm_id, customer_id], ...]: methods saved earlier (benchmarks)."""
    fake: FakeHyperswitch = request.app.state.fake
    pairs = json.loads(await request.body())
    fake.payment_methods.update({method: customer for method, customer in pairs})
    return JSONResponse({"payment_methods": len(fake.payment_methods)})


async def call_counts(request: Request) -> Response:
    """GET /_fake/calls: how many requests each route got (benchmarks count PSP calls with it)."""
    fake: FakeHyperswitch = request.app.state.fake
    counts: dict[str, int] = {}
    for call in fake.calls:
        route = f"{call.method} /{call.path.split('/')[1]}"
        counts[route] = counts.get(route, 0) + 1
    return JSONResponse(counts)


async def revoke(request: Request) -> Response:
    """POST /_fake/mandates/{payment_method_id}/revoke: revoke it, send mandate_revoked."""
    fake: FakeHyperswitch = request.app.state.fake
    mandate = revoke_mandate(fake, request.path_params["payment_method_id"])
    delivered = await _send_webhook(fake, "mandate_revoked", mandate)
    return JSONResponse({"object": mandate, "event_type": "mandate_revoked", "webhook_status": delivered})


async def _send_webhook(fake: FakeHyperswitch, event_type: str, obj: dict[str, Any]) -> int | None:
    if not (fake.webhook_url and fake.webhook_secret):
        return None
    body = webhook_body(event_type, obj)
    headers = {
        "content-type": "application/json",
        "user-agent": "Hyperswitch-Backend-Server",
        events.SIGNATURE_HEADER: events.sign(body, fake.webhook_secret),
    }
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(fake.webhook_url, content=body, headers=headers)
    return response.status_code


def _retrieve(
    route: str, param: str, noun: str, objects: Callable[[FakeHyperswitch], dict[str, dict[str, Any]]]
) -> Callable[[Request], Awaitable[Response]]:
    """GET /payments/{payment_id} and the like: the object, or the server's 404 for an unknown id."""

    async def retrieve(request: Request) -> Response:
        fake: FakeHyperswitch = request.app.state.fake
        _, refused = await _guard(request, fake, route)
        if refused is not None:
            return refused
        found = objects(fake).get(request.path_params[param])
        if found is None:
            return _error(404, "HE_02", f"{noun} does not exist in our records")
        return JSONResponse(found)

    return retrieve


get_payment = _retrieve("GET /payments", "payment_id", "Payment", lambda fake: fake.payments)
get_refund = _retrieve("GET /refunds", "refund_id", "Refund", lambda fake: fake.refunds)
get_dispute = _retrieve("GET /disputes", "dispute_id", "Dispute", lambda fake: fake.disputes)


# -- the lists settle walks -------------------------------------------------------------------------

# PaymentListConstraints: the server denies any other query field (`created.gte`, with a dot).
PAYMENT_LIST_FIELDS = {
    "customer_id",
    "starting_after",
    "ending_before",
    "limit",
    "created",
    "created.lt",
    "created.gt",
    "created.lte",
    "created.gte",
}
_RANGE = {
    "created.lt": operator.lt,
    "created.gt": operator.gt,
    "created.lte": operator.le,
    "created.gte": operator.ge,
}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def newest_first(objects: dict[str, dict[str, Any]], created: str) -> list[dict[str, Any]]:
    """The objects newest first by their `created` time, ties in reverse order of creation."""
    indexed = list(enumerate(objects.values()))
    indexed.sort(key=lambda pair: (pair[1].get(created) or "", pair[0]), reverse=True)
    return [obj for _, obj in indexed]


@dataclass
class _Ordered:
    """The fake's payments (or refunds) newest first, rebuilt when their number changes: a walk
    through 100,000 of them costs a sort, not one per page."""

    size: int = -1
    objects: list[dict[str, Any]] = field(default_factory=list)
    position: dict[str, int] = field(default_factory=dict)


def _ordered(fake: FakeHyperswitch, kind: str) -> _Ordered:
    store, created, key = (
        (fake.payments, "created", "payment_id")
        if kind == "payments"
        else (fake.refunds, "created_at", "refund_id")
    )
    cached: _Ordered = fake.ordered.setdefault(kind, _Ordered())
    if cached.size != len(store):
        cached.objects = newest_first(store, created)
        cached.position = {obj[key]: n for n, obj in enumerate(cached.objects)}
        cached.size = len(store)
    return cached


async def list_payments(request: Request) -> Response:
    """GET /payments/list: `{size, data}`, newest first; `starting_after` a payment id."""
    fake: FakeHyperswitch = request.app.state.fake
    _, refused = await _guard(request, fake, "GET /payments/list", query=PAYMENT_LIST_FIELDS)
    if refused is not None:
        return refused
    query = dict(request.query_params)
    problem = _bad_payment_list(query)
    if problem is not None:
        fake.violations.append(f"GET /payments/list: {problem}")
        return _error(400, "IR_06", f"Json deserialize error: {problem}")
    ordered = _ordered(fake, "payments")
    start = ordered.position[query["starting_after"]] + 1 if "starting_after" in query else 0
    bounds = [(op, _at(query[key])) for key, op in _RANGE.items() if key in query]
    limit, page = int(query.get("limit", "10")), list[dict[str, Any]]()
    for payment in ordered.objects[start:]:
        if len(page) == limit:
            break
        at = _at(payment.get("created") or "1970-01-01T00:00:00Z")
        if all(op(at, bound) for op, bound in bounds):
            page.append(payment)
    return JSONResponse({"size": len(page), "data": page})


def _bad_payment_list(query: dict[str, str]) -> str | None:
    if "limit" in query and not (query["limit"].isdigit() and int(query["limit"]) <= 100):
        return "limit should be an integer of at most 100"
    for key in _RANGE:
        if key in query:
            try:
                if _at(query[key]).tzinfo is None:
                    return f"{key}: a time without its offset"
            except ValueError:
                return f"{key}: not a date-time"
    return None


async def list_refunds(request: Request) -> Response:
    """POST /refunds/list (RefundListRequest, unknown fields refused): `{count, total_count, data}`,
    newest first, from `offset`."""
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /refunds/list")
    if refused is not None:
        return refused
    unknown = set(body) - openapi.properties("RefundListRequest") if isinstance(body, dict) else set()
    if unknown:
        fake.violations.append(f"<root>: unknown field {sorted(unknown)[0]!r}")
        return _error(400, "IR_06", f"Json deserialize error: unknown field `{sorted(unknown)[0]}`")
    refused = _invalid(fake, "RefundListRequest", body)
    if refused is None and body.get("limit", 10) > 100:
        fake.violations.append("limit: over 100")
        refused = _error(400, "IR_06", "limit should be less than or equal to 100")
    if refused is not None:
        return refused
    found = _refunds_between(fake, body["start_time"], body.get("end_time") or _now())
    offset, limit = body.get("offset") or 0, body.get("limit", 10)
    page = found[offset : offset + limit]
    return JSONResponse({"count": len(page), "total_count": len(found), "data": page})


def _refunds_between(fake: FakeHyperswitch, start_time: str, end_time: str) -> list[dict[str, Any]]:
    """The refunds created in [start_time, end_time], newest first; the last window asked is
    kept, so paging through 20,000 refunds filters them once."""
    ordered = _ordered(fake, "refunds")
    key = (start_time, end_time, ordered.size)
    cached = fake.ordered.get("refunds_between")
    if cached is None or cached[0] != key:
        start, end = _at(start_time), _at(end_time)
        found = [
            r for r in ordered.objects if start <= _at(r.get("created_at") or "1970-01-01T00:00:00Z") <= end
        ]
        fake.ordered["refunds_between"] = cached = (key, found)
    return list(cached[1])


# -- silent drift: the PSP's state changes and no webhook is sent ----------------------------------


def change_amount(fake: FakeHyperswitch, payment_id: str, amount: int) -> dict[str, Any]:
    """The PSP's record of a payment says another amount than ours (a connector's adjustment)."""
    payment = fake.payments[payment_id]
    payment.update(amount=amount, net_amount=amount, amount_received=amount)
    return payment


def payment_we_never_made(fake: FakeHyperswitch, amount: int, currency: str = "USD") -> dict[str, Any]:
    """A succeeded payment whose id has our form (`pay_` + 26 base32 characters) that no order or
    invoice of ours holds: made with our key by someone else, or a row of ours lost."""
    payment_id = "pay_" + base64.b32encode(uuid.uuid4().bytes).decode("ascii").rstrip("=").lower()
    fake.payments[payment_id] = {
        "payment_id": payment_id,
        "merchant_id": MERCHANT,
        "status": "succeeded",
        "amount": amount,
        "amount_received": amount,
        "currency": currency,
        "created": _now(),
    }
    return fake.payments[payment_id]


# -- payouts ----------------------------------------------------------------------------------------

# The webhook Hyperswitch sends when a payout reaches a status (EventType, payouts feature).
PAYOUT_EVENTS = {
    "success": "payout_success",
    "failed": "payout_failed",
    "ineligible": "payout_failed",
    "cancelled": "payout_cancelled",
    "expired": "payout_expired",
    "reversed": "payout_reversed",
    "initiated": "payout_initiated",
    "pending": "payout_processing",
}


async def create_payout(request: Request) -> Response:
    """POST /payouts/create: the PSP generates the payout_id; nothing makes a create unique (a
    second one with the same merchant_order_reference_id is a second payout)."""
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /payouts/create", "PayoutsCreateRequest")
    if refused is not None:
        return refused
    method, customer_id = body.get("payout_method_id"), body.get("customer_id")
    if method is not None and fake.payout_methods.get(method) != customer_id:
        return _error(400, "IR_16", "payout method does not belong to this customer")
    payout = new_payout(body)
    fake.payouts[payout["payout_id"]] = payout
    outcome = fake.payout_outcomes.pop(0) if fake.payout_outcomes else "pending"
    settle_payout(fake, payout["payout_id"], outcome)
    final = outcome in ("success", "failed")  # the real server sends the status's webhook itself
    return await _reply(
        fake, "POST /payouts/create", payout, webhook=PAYOUT_EVENTS[outcome] if final else None
    )


def new_payout(body: dict[str, Any]) -> dict[str, Any]:
    """A PayoutCreateResponse for a create request."""
    payout_id = f"payout_{secrets.token_hex(12)[:23]}"  # 30 characters, as the spec has them
    return {
        "payout_id": payout_id,
        "merchant_id": MERCHANT,
        "merchant_order_reference_id": body.get("merchant_order_reference_id"),
        "amount": body["amount"],
        "currency": body["currency"],
        "connector": "fauxpay",
        "payout_type": body.get("payout_type"),
        "payout_method_id": body.get("payout_method_id"),
        "auto_fulfill": bool(body.get("auto_fulfill")),
        "customer_id": body.get("customer_id") or f"cus_{secrets.token_hex(10)}",
        "client_secret": f"{payout_id}_secret_{secrets.token_hex(10)}",
        "return_url": "https://veza.example/payouts",
        "business_country": "US",
        "entity_type": "Individual",
        "recurring": False,
        "metadata": body.get("metadata"),
        "status": "requires_creation",
        "error_message": None,
        "error_code": None,
        "profile_id": "pro_fake",
        "created": _now(),
        "connector_transaction_id": f"tr_{secrets.token_hex(8)}",
    }


def settle_payout(
    fake: FakeHyperswitch, payout_id: str, status: str, error_message: str | None = None
) -> dict[str, Any]:
    """The bank answered (or returned the money): the payout is now `status`."""
    payout = fake.payouts[payout_id]
    failed = status in ("failed", "ineligible", "cancelled", "expired", "reversed")
    payout.update(
        status=status,
        error_message=(error_message or f"payout {status}") if failed else None,
        error_code="R01" if failed else None,
    )
    return payout


async def get_payout(request: Request) -> Response:
    fake: FakeHyperswitch = request.app.state.fake
    _, refused = await _guard(request, fake, "GET /payouts", query=frozenset({"force_sync"}))
    if refused is not None:
        return refused
    found = fake.payouts.get(request.path_params["payout_id"])
    if found is None:
        return _error(404, "HE_02", "Payout does not exist in our records")
    return JSONResponse(found)


# PayoutListFilterConstraints marks these required; the server's own struct does not need them
# (time_range is an optional flattened field, currency and entity_type optional filters). The
# fake type-checks every field a request sends, fills these in only to get past `required`.
_LIST_NOT_REQUIRED = {"currency": "USD", "entity_type": "Individual", "start_time": "2000-01-01T00:00:00Z"}


async def list_payouts(request: Request) -> Response:
    """POST /payouts/list: the payouts matching the filters, newest first; limit at most 20."""
    fake: FakeHyperswitch = request.app.state.fake
    body, refused = await _guard(request, fake, "POST /payouts/list")
    if refused is not None:
        return refused
    refused = _invalid_list(fake, body)
    if refused is not None:
        return refused
    found = [
        p
        for p in reversed(fake.payouts.values())
        if all(body.get(key) in (None, p.get(key)) for key in ("merchant_order_reference_id", "customer_id"))
    ]
    offset, limit = body.get("offset") or 0, body.get("limit", 10)
    page = found[offset : offset + limit]
    return JSONResponse({"size": len(page), "data": page, "total_count": len(found)})


def _invalid_list(fake: FakeHyperswitch, body: Any) -> Response | None:
    if not isinstance(body, dict):
        return _invalid(fake, "PayoutListFilterConstraints", body)
    unknown = set(body) - openapi.properties("PayoutListFilterConstraints")
    if unknown:
        fake.violations.append(f"<root>: unknown field {sorted(unknown)[0]!r}")
        return _unknown_field(unknown)
    refused = _invalid(fake, "PayoutListFilterConstraints", {**_LIST_NOT_REQUIRED, **body})
    if refused is None and body.get("limit", 10) > 20:
        fake.violations.append("limit: over 20")
        return _error(400, "IR_06", "limit should be less than or equal to 20")
    return refused


async def payout_control(request: Request) -> Response:
    """POST /_fake/payouts/{payout_id}/{status}[?webhook=false]: the payout reaches `status`
    (success, failed, reversed...); its webhook is sent unless asked not to."""
    fake: FakeHyperswitch = request.app.state.fake
    payout_id, status = request.path_params["payout_id"], request.path_params["status"]
    if payout_id not in fake.payouts:
        return _error(404, "HE_02", f"payout {payout_id} does not exist")
    payout = settle_payout(fake, payout_id, status)
    delivered = None
    if request.query_params.get("webhook", "true") != "false":
        delivered = await _send_webhook(fake, PAYOUT_EVENTS[status], dict(payout))
    return JSONResponse({"object": payout, "event_type": PAYOUT_EVENTS[status], "webhook_status": delivered})


async def add_payout_methods(request: Request) -> Response:
    """POST /_fake/payout_methods [[method_id, customer_id], ...]: bank accounts saved earlier."""
    fake: FakeHyperswitch = request.app.state.fake
    pairs = json.loads(await request.body())
    fake.payout_methods.update({method: customer for method, customer in pairs})
    return JSONResponse({"payout_methods": len(fake.payout_methods)})


def create_fake(api_key: str, webhook_url: str | None = None, webhook_secret: str | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/payments", create_payment, methods=["POST"]),
            Route("/payments/list", list_payments, methods=["GET"]),
            Route("/refunds/list", list_refunds, methods=["POST"]),
            Route("/payments/{payment_id}", get_payment, methods=["GET"]),
            Route("/payments/{payment_id}/cancel", cancel_payment, methods=["POST"]),
            Route("/payments/{payment_id}/cancel_post_capture", cancel_post_capture, methods=["POST"]),
            Route("/disputes/list", list_disputes, methods=["GET"]),
            Route("/disputes/{dispute_id}", get_dispute, methods=["GET"]),
            Route("/refunds", create_refund, methods=["POST"]),
            Route("/refunds/{refund_id}", get_refund, methods=["GET"]),
            Route("/payouts/create", create_payout, methods=["POST"]),
            Route("/payouts/list", list_payouts, methods=["POST"]),
            Route("/payouts/{payout_id}", get_payout, methods=["GET"]),
            Route("/_fake/payout_methods", add_payout_methods, methods=["POST"]),
            Route("/_fake/payouts/{payout_id:str}/{status:str}", payout_control, methods=["POST"]),
            Route("/_fake/mandates/{payment_method_id:str}/revoke", revoke, methods=["POST"]),
            Route("/_fake/payment_methods", add_payment_methods, methods=["POST"]),
            Route("/_fake/payments/{payment_id:str}/dashboard_refund", dashboard_refund, methods=["POST"]),
            Route("/_fake/payments/{payment_id:str}/dispute", dispute_control, methods=["POST"]),
            Route("/_fake/calls", call_counts, methods=["GET"]),
            Route("/_fake/{kind:str}/{object_id:str}/{outcome:str}", control, methods=["POST"]),
        ]
    )
    app.state.fake = FakeHyperswitch(api_key, webhook_url, webhook_secret)
    return app


app = create_fake(
    os.environ.get("FAKE_HYPERSWITCH_API_KEY", "snd_dev"),
    os.environ.get("FAKE_HYPERSWITCH_WEBHOOK_URL"),
    os.environ.get("FAKE_HYPERSWITCH_WEBHOOK_SECRET"),
)
