"""Payouts without services: what each Hyperswitch PayoutStatus means, and the client's mapping."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest

from veza_worker import errors, hyperswitch, payouts

SPEC = Path(__file__).resolve().parents[1] / "hyperswitch" / "openapi_spec_v1.json"


def test_every_payout_status_of_the_spec_has_a_meaning_and_only_those() -> None:
    spec = json.loads(SPEC.read_text())["components"]["schemas"]["PayoutStatus"]["enum"]

    assert payouts.PSP_STATUSES == set(spec)
    meanings = [payouts.PSP_PAID, payouts.PSP_FAILED, payouts.PSP_REVERSED, payouts.PSP_NOT_FINAL]
    assert sum(len(m) for m in meanings) == len(spec)  # each status means one thing


def test_every_payout_event_of_the_spec_is_dispatched() -> None:
    spec = json.loads(SPEC.read_text())["components"]["schemas"]["EventType"]["enum"]

    assert set(payouts.EVENTS) == {event for event in spec if event.startswith("payout_")}
    assert set(payouts.EVENTS.values()) <= payouts.PSP_STATUSES


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("success", "payout_success"),
        ("failed", "payout_failed"),
        ("ineligible", "payout_failed"),
        ("cancelled", "payout_cancelled"),
        ("expired", "payout_expired"),
        ("reversed", "payout_reversed"),
    ],
)
def test_a_final_status_read_by_the_reconciler_stands_for_its_webhook(status: str, event: str) -> None:
    assert payouts.is_final(status)
    assert payouts.event_type(status) == event
    assert payouts.EVENTS[event] in (status, "failed")


def test_not_final_statuses_wait() -> None:
    for status in ("initiated", "pending", "requires_fulfillment", "requires_creation"):
        assert not payouts.is_final(status)


def test_the_merchant_reference_is_po_and_the_base32_of_the_payout_uuid() -> None:
    payout_id = uuid.UUID("0195f3a1-c2d4-7b7e-9a3d-5f10c8e24b61")

    reference = hyperswitch.merchant_id("po", payout_id)

    assert re.fullmatch(r"po_[a-z2-7]{26}", reference)
    assert reference[3:] == hyperswitch.merchant_id("pay", payout_id)[4:]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_api_key_is_unauthorized_not_a_rejection_of_the_payout(status: int) -> None:
    body = {"error": {"type": "invalid_request", "code": "IR_01", "message": "API key not provided"}}
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    client = hyperswitch.Client("http://psp.invalid", "k", transport=transport)

    with pytest.raises(errors.HyperswitchUnauthorized) as raised:
        client.list_payouts("po_" + "a" * 26)
    assert isinstance(raised.value, errors.HyperswitchRejected)  # callers of round 1 are unchanged
    assert raised.value.code == "IR_01"


def test_payout_routes_are_metric_labels_without_ids() -> None:
    assert hyperswitch.endpoint("POST", "/payouts/create") == "POST /payouts/create"
    assert hyperswitch.endpoint("POST", "/payouts/list") == "POST /payouts/list"
    assert hyperswitch.endpoint("GET", "/payouts/payout_abc?force_sync=true") == "GET /payouts/{id}"


def test_a_list_answer_without_data_is_an_unavailable_psp() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"size": 0}))
    client = hyperswitch.Client("http://psp.invalid", "k", transport=transport)

    with pytest.raises(errors.HyperswitchUnavailable):
        client.list_payouts("po_" + "a" * 26)
