"""The Hyperswitch client without a PSP: merchant ids, error mapping, when a client exists."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from veza_worker import errors, hyperswitch
from veza_worker.settings import Settings


def test_merchant_ids_are_30_characters_of_lowercase_base32_derived_from_the_uuid() -> None:
    row_id = uuid.UUID("0195f3a1-c2d4-7b7e-9a3d-5f10c8e24b61")

    payment_id = hyperswitch.merchant_id("pay", row_id)

    assert payment_id == hyperswitch.merchant_id("pay", row_id)  # stable: a retry sends the same id
    assert len(payment_id) == 30 and re.fullmatch(r"pay_[a-z2-7]{26}", payment_id)
    assert hyperswitch.merchant_id("ref", row_id)[4:] == payment_id[4:]
    assert hyperswitch.merchant_id("pay", uuid.uuid4()) != payment_id
    assert hyperswitch.merchant_id("cus", row_id)[4:] == payment_id[4:]  # a customer: keyed by the user
    with pytest.raises(ValueError):
        hyperswitch.merchant_id("usr", row_id)


def test_the_specs_flat_error_shape_is_mapped_too() -> None:
    body = {"error_type": "invalid_request", "message": "Missing required param: amount", "code": "IR_04"}
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=body))
    client = hyperswitch.Client("http://psp.invalid", "k", transport=transport)

    with pytest.raises(errors.HyperswitchRejected) as raised:
        client.get_payment("pay_x")
    assert (raised.value.error_type, raised.value.code, raised.value.message) == (
        "invalid_request",
        "IR_04",
        "Missing required param: amount",
    )


def test_a_client_exists_only_when_the_provider_is_configured() -> None:
    assert hyperswitch.from_settings(Settings()) is None
    assert hyperswitch.from_settings(Settings(hyperswitch_enabled=True, hyperswitch_url="http://x")) is None
    with pytest.raises(errors.PaymentProviderNotConfigured, match="payment provider not configured"):
        hyperswitch.require(Settings(hyperswitch_url="http://x", hyperswitch_api_key="k"))
    configured = Settings(hyperswitch_enabled=True, hyperswitch_url="http://x", hyperswitch_api_key="k")
    assert isinstance(hyperswitch.from_settings(configured), hyperswitch.Client)
