"""Hyperswitch webhook bodies: signatures, envelopes and what a payment object says was paid."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-webhook-signature-512"


class BadDelivery(Exception):
    """A signed body that can never be applied; its text becomes `error: <text>`."""


@dataclass(frozen=True)
class Event:
    """One webhook, whatever envelope it came in: the event and the PSP object it is about."""

    event_type: str | None  # None only for a bare refund object, dispatched by its refund_id
    event_id: str | None
    object_type: str | None  # content.type: payment_details, refund_details, ...
    data: Mapping[str, Any]  # content.object: the object the REST API returns


def sign(body: bytes, secret: str) -> str:
    """Lowercase hex HMAC-SHA512 of the raw body, keyed by the secret's UTF-8 bytes."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha512).hexdigest()


def matching_secret(body: bytes, signature: str | None, secrets: Sequence[str]) -> int | None:
    """Position of the secret that signed `body`, or None. Every secret is compared, in constant time."""
    if not signature:
        return None
    given = signature.strip().lower().encode("utf-8", "replace")
    matches = [hmac.compare_digest(sign(body, secret).encode("ascii"), given) for secret in secrets]
    return matches.index(True) if True in matches else None


@overload
def storable(value: str) -> str: ...
@overload
def storable(value: None) -> None: ...
def storable(value: str | None) -> str | None:
    """Text Postgres can hold: NUL and unpaired surrogates replaced, never rejected."""
    if value is None:
        return None
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def decode_body(body: bytes) -> tuple[str, bytes | None]:
    """The body as storable text, plus the exact bytes when the text is not them."""
    text = storable(body.decode("utf-8", "replace"))
    return text, (None if text.encode("utf-8") == body else body)


def loads(body: bytes | str) -> Any:
    """json.loads that fails with ValueError only, whatever the input's size or depth."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(str(exc)) from exc


def peek(body: bytes) -> tuple[str | None, str | None]:
    """(event_type, event_id) for the audit row, best effort: None when absent or not JSON."""
    try:
        document = loads(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    return _text(document.get("event_type")), _text(document.get("event_id"))


def parse(body: bytes | str) -> Event:
    """The Event in a body of any accepted shape, or BadDelivery saying why not.

    Shapes: Hyperswitch's `{event_type, content: {type, object}}`, `{event_type, object}`, and
    flat, where the object's fields sit at the top level beside `event_type`.
    """
    try:
        document = loads(body)
    except ValueError as exc:
        raise BadDelivery("invalid json") from exc
    if not isinstance(document, dict):
        raise BadDelivery("invalid envelope: not a JSON object")
    event_type = _text(document.get("event_type"))
    object_type, data = _object_of(document)
    if event_type is None and not isinstance(data.get("refund_id"), str):
        raise BadDelivery("missing event_type")
    return Event(event_type, _text(document.get("event_id")), object_type, data)


def paid_in_full(payment: Mapping[str, Any], amount: int, currency: str, what: str) -> bool:
    """True when a payment object paid exactly `amount` `currency`; else one ERROR line naming `what`.

    An underpaid order or invoice must grant nothing, so a mismatch is never applied.
    """
    if _paid(payment) == (amount, currency):
        return True
    log.error(
        "%s amount mismatch: psp amount=%r amount_received=%r currency=%r, expected %d %s",
        what,
        payment.get("amount"),
        payment.get("amount_received"),
        payment.get("currency"),
        amount,
        currency,
    )
    return False


def _paid(payment: Mapping[str, Any]) -> tuple[int | None, Any]:
    """(amount, currency) a payment object says was paid; None when the amount is not a whole number
    or amount_received disagrees with it."""
    amount, received = _minor_units(payment.get("amount")), payment.get("amount_received")
    if received is not None and _minor_units(received) != amount:
        return None, payment.get("currency")
    return amount, payment.get("currency")


def _minor_units(value: Any) -> int | None:
    """An integer amount, or None for anything else (a float, a string, a bool)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _object_of(document: dict[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    content = document.get("content")
    if isinstance(content, dict) and isinstance(content.get("object"), dict):
        return _text(content.get("type")), content["object"]
    if isinstance(document.get("object"), dict):
        return _text(document.get("type")), document["object"]
    return None, document


def _text(value: Any) -> str | None:
    """A non-empty JSON string made storable; anything else is None."""
    return storable(value) if isinstance(value, str) and value else None
