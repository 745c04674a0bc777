"""Hyperswitch webhook bodies: signatures, envelopes and what a payment object says was paid."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
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
    data = cleaned(data)
    if event_type is None and not isinstance(data.get("refund_id"), str):
        raise BadDelivery("missing event_type")
    return Event(event_type, _text(document.get("event_id")), object_type, data)


@dataclass(frozen=True)
class PaymentOutcome:
    """What a payment object says happened to the money, whatever event carried it."""

    kind: str  # "paid" | "partial" (less captured than asked) | "failed"
    captured: int  # minor units the PSP holds for us: what an automatic refund gives back


_PAYMENT_EVENT_KINDS = {"payment_succeeded": "paid", "payment_captured": "paid"}


def payment_outcome(event_type: str | None, payment: Mapping[str, Any]) -> PaymentOutcome:
    """The object's `status` and `amount_received` decide, never the event type alone: a
    `payment_succeeded` whose capture fell short is a partial capture."""
    status = payment.get("status")
    amount = _minor_units(payment.get("amount")) or 0
    received = _minor_units(payment.get("amount_received"))
    if status == "partially_captured":
        return PaymentOutcome("partial", received or 0)
    taken = status == "succeeded" or (status is None and _PAYMENT_EVENT_KINDS.get(event_type or "") == "paid")
    if not taken:
        return PaymentOutcome("failed", 0)
    if received is not None and received < amount:
        return PaymentOutcome("partial", received)
    return PaymentOutcome("paid", received if received is not None else amount)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and unpaired surrogates: Postgres text refuses them
_ID = re.compile(r"[\x21-\x7e]{1,64}")  # Hyperswitch ids: printable ASCII, at most 64 characters


def object_id(data: Mapping[str, Any], key: str) -> str | None:
    """The PSP id at `key`, None when absent; BadDelivery when it could never name an object of
    ours (wrong type, NUL, non-ASCII, over-long): such a delivery fails at once, not for 10 minutes."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadDelivery(f"invalid {key}")
    return value


def cleaned(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy whose every string (keys too, at any depth) Postgres can store: NUL and unpaired
    surrogates become U+FFFD (so an id that held one is visibly not an id). Iterative, so no depth
    json accepted can overflow it."""
    root: dict[str, Any] = {}
    todo: list[tuple[Any, Any]] = [(data, root)]
    while todo:
        source, target = todo.pop()
        items = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, value in items:
            key = _UNSTORABLE.sub("\ufffd", key) if isinstance(key, str) else key
            if isinstance(value, str):
                value = _UNSTORABLE.sub("\ufffd", value)
            elif isinstance(value, Mapping | list):
                copy: Any = {} if isinstance(value, Mapping) else [None] * len(value)
                todo.append((value, copy))
                value = copy
            target[key] = value
    return root


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
