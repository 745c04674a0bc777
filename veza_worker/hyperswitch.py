"""The Hyperswitch REST client and our merchant-supplied ids: the only module that speaks HTTP out.

One try per call, no retry loop: an ambiguous failure raises HyperswitchUnavailable and the
reconciler settles the row. Idempotency is the merchant-supplied id: Hyperswitch v1 answers a
second create with the same id with 400 HE_01 and does not replay, so the client GETs the object.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from veza_worker import errors, metrics
from veza_worker.settings import Settings

log = logging.getLogger(__name__)

DUPLICATE = "HE_01"  # "already exists": the object was created by an earlier try
NOT_FOUND = "HE_02"
TIMEOUT = httpx.Timeout(20.0, connect=5.0)
UNAVAILABLE = "payment provider unavailable, will be reconciled"

JSON = dict[str, Any]


def merchant_id(prefix: str, row_id: uuid.UUID) -> str:
    """`pay_`/`ref_`/`cus_` + the 26-character lowercase base32 of the row's UUID: 30 characters
    (`po_`, a payout's merchant_order_reference_id: 29).

    `cus_` is keyed by the user's uuid: every payment of one user names the same PSP customer.
    """
    if prefix not in ("pay", "ref", "cus", "po"):
        raise ValueError(f"unknown merchant id prefix {prefix!r}")
    return f"{prefix}_" + base64.b32encode(row_id.bytes).decode("ascii").rstrip("=").lower()


class Client:
    """Hyperswitch v1 over one long-lived httpx.Client."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"api-key": api_key, "accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def create_payment(
        self,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
        description: str | None = None,
        customer_id: str | None = None,
        save_for_off_session: bool = False,
        off_session_payment_method: str | None = None,
    ) -> JSON:
        """Create a payment; on-session (the customer confirms it with the client_secret) unless
        `off_session_payment_method` is given: then it is confirmed at once with that saved method.

        `save_for_off_session` asks the PSP to keep the method for later renewals (a customer is
        required for both).
        """
        body: JSON = {
            "payment_id": payment_id,
            "amount": amount,
            "currency": currency,
            "metadata": dict(metadata),
        }
        if description:
            body["description"] = description
        if customer_id:
            body["customer"] = {"id": customer_id}
        if save_for_off_session:
            body["setup_future_usage"] = "off_session"
        if off_session_payment_method:
            body["confirm"] = True
            body["off_session"] = True
            body["recurring_details"] = {"type": "payment_method_id", "data": off_session_payment_method}
        if (save_for_off_session or off_session_payment_method) and not customer_id:
            raise ValueError(f"payment {payment_id}: a saved payment method needs a customer")
        return self._create("/payments", body, idempotency_key, lambda: self.get_payment(payment_id))

    def cancel_payment(self, payment_id: str, reason: str) -> JSON:
        """Cancel a payment that is not final; a final one is refused with a 400 (IR_14)."""
        return self._json("POST", f"/payments/{payment_id}/cancel", json={"cancellation_reason": reason})

    def cancel_or_read(self, payment_id: str, reason: str) -> JSON:
        """Cancel a payment that is not final; when the PSP refuses because it is final already,
        the payment as it now is. HyperswitchNotFound only when the cancel itself found none: a
        payment the PSP refused to cancel and then cannot find is an answer nobody can act on."""
        try:
            return self.cancel_payment(payment_id, reason)
        except errors.HyperswitchNotFound:
            raise
        except errors.HyperswitchRejected:
            pass
        try:
            return self.get_payment(payment_id)
        except errors.HyperswitchNotFound as exc:
            raise errors.HyperswitchUnavailable(
                f"payment {payment_id}: cancel refused, then not found"
            ) from exc

    def get_payment(self, payment_id: str, *, force_sync: bool = True) -> JSON:
        return self._json("GET", f"/payments/{payment_id}", params={"force_sync": _flag(force_sync)})

    def create_refund(
        self,
        *,
        refund_id: str,
        payment_id: str,
        amount: int,
        reason: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> JSON:
        """Always with its amount: without one Hyperswitch refunds the whole captured amount,
        whatever was refunded before."""
        body: JSON = {
            "refund_id": refund_id,
            "payment_id": payment_id,
            "amount": amount,
            "reason": reason,
            "metadata": dict(metadata),
        }
        return self._create("/refunds", body, idempotency_key, lambda: self.get_refund(refund_id))

    def get_refund(self, refund_id: str, *, force_sync: bool = True) -> JSON:
        # The spec lists no force_sync for this GET; the server accepts it and syncs with the connector.
        return self._json("GET", f"/refunds/{refund_id}", params={"force_sync": _flag(force_sync)})

    def get_dispute(self, dispute_id: str) -> JSON:
        return self._json("GET", f"/disputes/{dispute_id}")

    def list_disputes(self, *, limit: int = 100) -> list[JSON]:
        """The merchant's disputes, a bare JSON array. `limit` only: the server's
        DisputeListGetConstraints denies unknown fields, whatever the spec lists."""
        document = self._document("GET", "/disputes/list", params={"limit": limit})
        if not isinstance(document, list) or not all(isinstance(d, dict) for d in document):
            raise errors.HyperswitchUnavailable("GET /disputes/list: not an array of disputes")
        return document

    def create_payout(
        self,
        *,
        merchant_reference: str,
        amount: int,
        currency: str,
        customer_id: str,
        payout_method_id: str,
        payout_type: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> JSON:
        """A payout to a stored payout method, confirmed and fulfilled at once. The PSP generates
        its payout_id; ours is `merchant_order_reference_id`, by which `list_payouts` finds it
        again after an ambiguous answer. No HE_01 to fall back on: the caller looks it up first."""
        _require_key("/payouts/create", idempotency_key)
        body: JSON = {
            "amount": amount,
            "currency": currency,
            "customer_id": customer_id,
            "payout_method_id": payout_method_id,
            "payout_type": payout_type,
            "confirm": True,
            "auto_fulfill": True,
            "merchant_order_reference_id": merchant_reference,
            "metadata": dict(metadata),
        }
        return self._json("POST", "/payouts/create", json=body, headers={"Idempotency-Key": idempotency_key})

    def get_payout(self, payout_id: str, *, force_sync: bool = True) -> JSON:
        return self._json("GET", f"/payouts/{payout_id}", params={"force_sync": _flag(force_sync)})

    def list_payouts(self, merchant_reference: str) -> list[JSON]:
        """The payouts the PSP holds under our merchant_order_reference_id. That and `limit` only:
        the spec marks currency and entity_type required, the server needs neither."""
        body = {"merchant_order_reference_id": merchant_reference, "limit": 20}
        return _data(self._json("POST", "/payouts/list", json=body), "POST /payouts/list")

    def list_payments(
        self,
        *,
        created_gte: datetime,
        created_lte: datetime,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> list[JSON]:
        """One page of the merchant's payments created in [created_gte, created_lte], newest first;
        the next page starts after the last one's payment_id. The server's PaymentListConstraints
        deny unknown fields, and name the range with dots (`created.gte`), whatever the spec's
        parameter list says."""
        params: JSON = {"created.gte": _iso(created_gte), "created.lte": _iso(created_lte), "limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return _data(self._json("GET", "/payments/list", params=params), "GET /payments/list")

    def list_refunds(
        self, *, start_time: datetime, end_time: datetime, offset: int, limit: int = 100
    ) -> list[JSON]:
        """One page of the merchant's refunds created in [start_time, end_time], from `offset`."""
        body = {"start_time": _iso(start_time), "end_time": _iso(end_time), "limit": limit, "offset": offset}
        return _data(self._json("POST", "/refunds/list", json=body), "POST /refunds/list")

    def _create(self, path: str, body: JSON, idempotency_key: str, fetch: Callable[[], JSON]) -> JSON:
        _require_key(path, idempotency_key)
        try:
            return self._json("POST", path, json=body, headers={"Idempotency-Key": idempotency_key})
        except errors.HyperswitchRejected as exc:
            if exc.code != DUPLICATE:
                raise
            log.info(
                "POST %s: %s already exists, fetching it",
                path,
                body.get("payment_id") or body.get("refund_id"),
            )
            return fetch()

    def _json(self, method: str, url: str, **kwargs: Any) -> JSON:
        document = self._document(method, url, **kwargs)
        if not isinstance(document, dict):
            raise errors.HyperswitchUnavailable(f"{method} {url}: a non-object body")
        return document

    def _document(self, method: str, url: str, **kwargs: Any) -> Any:
        """The answer's JSON; a body that is not JSON is an unavailable PSP, not an answer."""
        response = self._request(method, url, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise errors.HyperswitchUnavailable(
                f"{method} {url}: {response.status_code} with a non-JSON body"
            ) from exc

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            response = self._checked(method, url, **kwargs)
            outcome = "ok"
            return response
        except errors.HyperswitchNotFound:
            outcome = "not_found"
            raise
        except errors.HyperswitchRejected:
            outcome = "rejected"
            raise
        finally:
            metrics.psp_request(endpoint(method, url), outcome, time.perf_counter() - started)

    def _checked(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            raise errors.HyperswitchUnavailable(f"{method} {url}: {exc!r}") from exc
        if response.status_code == 429 or response.is_server_error:
            raise errors.HyperswitchUnavailable(f"{method} {url}: {response.status_code}")
        if response.status_code == 404 and not _is_hyperswitch_error(response):
            # A 404 that is not Hyperswitch's own answer (an HTML page, a proxy, a wrong path in
            # HYPERSWITCH_URL) says nothing about our object: the PSP is unavailable to us.
            raise errors.HyperswitchUnavailable(
                f"{method} {url}: 404 without a Hyperswitch error body (is HYPERSWITCH_URL right?)"
            )
        if response.is_error:
            raise rejection(response)
        return response


def key_refused(
    what: str, exc: errors.HyperswitchUnauthorized, output: dict[str, Any] | None = None
) -> errors.PaymentProviderMisconfigured:
    """A create refused with 401/403 (IR_01): our API key, not the object, was refused. Logs the
    one ERROR naming HYPERSWITCH_API_KEY; the error the caller raises (its row stays as after an
    ambiguous failure, for the reconciler)."""
    log.error(
        "%s: the payment provider refused our API key (%s): check HYPERSWITCH_API_KEY;"
        " left as after an ambiguous failure, for the reconciler",
        what,
        exc,
    )
    return errors.PaymentProviderMisconfigured(UNAVAILABLE, output)


def _require_key(path: str, idempotency_key: str) -> None:
    if not idempotency_key or not idempotency_key.strip():
        raise ValueError(f"POST {path}: an empty Idempotency-Key is a programming error")


_VERBS = {"list", "cancel", "create"}


def endpoint(method: str, url: str) -> str:
    """`GET /payments/{id}`: the route, never the id (a metric label per id would be unbounded)."""
    parts = url.split("?")[0].strip("/").split("/")
    return f"{method} /" + "/".join([parts[0], *("{id}" if p not in _VERBS else p for p in parts[1:])])


def rejection(response: httpx.Response) -> errors.HyperswitchRejected:
    """A 4xx as our error, from any of the shapes Hyperswitch answers with. Only Hyperswitch's
    own error body (HE_02, or a 404 with `{"error": {...}}`) means "no such object"."""
    error_type, code, message = _error_fields(response)
    not_found = code == NOT_FOUND or (response.status_code == 404 and _is_hyperswitch_error(response))
    kind: type[errors.HyperswitchRejected] = errors.HyperswitchRejected
    if not_found:
        kind = errors.HyperswitchNotFound
    elif response.status_code in (401, 403):  # IR_01: our key, not the object
        kind = errors.HyperswitchUnauthorized
    return kind(response.status_code, error_type, code, message)


def _is_hyperswitch_error(response: httpx.Response) -> bool:
    try:
        document = response.json()
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get("error"), dict)


def _error_fields(response: httpx.Response) -> tuple[str, str, str]:
    try:
        document = response.json()
    except ValueError:
        return "unknown", "", response.text[:200] or response.reason_phrase
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):  # {"error": {"type", "code", "message"}}: what the server sends
        return str(error.get("type", "")), str(error.get("code", "")), str(error.get("message", ""))
    if isinstance(error, str):  # {"error": "..."}: a malformed request
        return "invalid_request", "", error
    if isinstance(document, dict) and "code" in document:  # the spec's GenericErrorResponseOpenApi
        return str(document.get("error_type", "")), str(document["code"]), str(document.get("message", ""))
    return "unknown", "", response.text[:200]


def _data(document: JSON, what: str) -> list[JSON]:
    """A list answer's `data`: an array of objects, or the PSP is not answering as it should."""
    data = document.get("data")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise errors.HyperswitchUnavailable(f"{what}: no array of objects in `data`")
    return data


def _iso(at: datetime) -> str:
    """An aware time as the PSP reads it: UTC, ISO 8601, `Z`."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def from_settings(settings: Settings) -> Client | None:
    """The client, or None when no payment provider is configured."""
    if not (settings.hyperswitch_enabled and settings.hyperswitch_url and settings.hyperswitch_api_key):
        return None
    return Client(settings.hyperswitch_url, settings.hyperswitch_api_key)


def require(settings: Settings) -> Client:
    client = from_settings(settings)
    if client is None:
        raise errors.PaymentProviderNotConfigured("payment provider not configured")
    return client
