"""The Hyperswitch client against the fake at its HTTP boundary, requests checked against the spec."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx
import pytest

from tests import openapi
from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment
from tests.support import PSP_API_KEY
from veza_worker import errors, hyperswitch


def new_payment(client: hyperswitch.Client, key: str = "order-1", amount: int = 4599) -> dict[str, Any]:
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    return client.create_payment(
        payment_id=payment_id, amount=amount, currency="USD", idempotency_key=key, metadata={"order_id": key}
    )


def test_a_create_sends_the_api_key_the_idempotency_key_and_a_body_valid_per_the_spec(
    client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    payment = new_payment(client, key="9d2e6f1c-0000-4000-8000-000000000001")

    [call] = fake.calls
    assert call.method == "POST" and call.path == "/payments"
    assert call.headers["api-key"] == PSP_API_KEY
    assert call.headers["idempotency-key"] == "9d2e6f1c-0000-4000-8000-000000000001"
    assert len(call.body["payment_id"]) == 30
    assert openapi.errors("PaymentsCreateRequest", call.body) == []
    assert payment["status"] == "requires_payment_method" and payment["client_secret"]
    assert openapi.errors("PaymentsResponse", payment) == []  # the fake answers per the spec too


def test_a_refund_request_is_valid_per_the_spec(client: hyperswitch.Client, fake: FakeHyperswitch) -> None:
    payment = new_payment(client)
    settle_payment(fake, payment["payment_id"], "succeeded")
    refund_id = hyperswitch.merchant_id("ref", uuid.uuid4())

    refund = client.create_refund(
        refund_id=refund_id,
        payment_id=payment["payment_id"],
        amount=payment["amount"],
        reason="requested_by_customer",
        idempotency_key="refund-key",
        metadata={"order_id": "o", "note": "customer changed their mind"},
    )

    call = fake.calls_to("POST", "/refunds")[0]
    assert openapi.errors("RefundRequest", call.body) == []
    assert call.headers["idempotency-key"] == "refund-key"
    assert refund["refund_id"] == refund_id and refund["status"] == "pending"
    assert openapi.errors("RefundResponse", refund) == []


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_idempotency_key_raises_before_any_request(
    client: hyperswitch.Client, fake: FakeHyperswitch, key: str
) -> None:
    with pytest.raises(ValueError, match="Idempotency-Key"):
        new_payment(client, key=key)
    with pytest.raises(ValueError, match="Idempotency-Key"):
        client.create_refund(
            refund_id="r" * 30,
            payment_id="p" * 30,
            amount=1,
            reason="duplicate",
            idempotency_key=key,
            metadata={},
        )
    assert fake.calls == []


def test_a_repeated_payment_create_gets_he_01_and_the_client_returns_the_existing_one(
    client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())

    def create() -> dict[str, Any]:
        return client.create_payment(
            payment_id=payment_id, amount=100, currency="EUR", idempotency_key="k", metadata={}
        )

    first, second = create(), create()

    assert second == first
    assert [(c.method, c.path) for c in fake.calls] == [
        ("POST", "/payments"),
        ("POST", "/payments"),
        ("GET", f"/payments/{payment_id}"),
    ]
    assert len(fake.payments) == 1


def test_a_repeated_refund_create_returns_the_existing_refund(
    client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    payment = new_payment(client)
    settle_payment(fake, payment["payment_id"], "succeeded")
    refund_id = hyperswitch.merchant_id("ref", uuid.uuid4())
    args: dict[str, Any] = {
        "refund_id": refund_id,
        "payment_id": payment["payment_id"],
        "amount": payment["amount"],
        "reason": "duplicate",
        "idempotency_key": "k",
        "metadata": {},
    }

    assert client.create_refund(**args) == client.create_refund(**args)
    assert len(fake.refunds) == 1
    assert fake.calls[-1].path == f"/refunds/{refund_id}"


def test_gets_ask_for_a_forced_sync(client: hyperswitch.Client, fake: FakeHyperswitch) -> None:
    payment = new_payment(client)
    client.get_payment(payment["payment_id"])
    with pytest.raises(errors.HyperswitchNotFound):
        client.get_refund("ref_" + "a" * 26)
    assert [c.path for c in fake.calls_to("GET", "/")] == [
        f"/payments/{payment['payment_id']}",
        f"/refunds/ref_{'a' * 26}",
    ]
    assert fake.calls[-1].headers["api-key"] == PSP_API_KEY


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Failure(status=500), errors.HyperswitchUnavailable),
        (Failure(status=503), errors.HyperswitchUnavailable),
        (Failure(status=429, code="RE_01", message="Too many requests"), errors.HyperswitchUnavailable),
        (Failure(status=400, code="IR_05", message="Missing required param"), errors.HyperswitchRejected),
        (Failure(status=422, code="IR_16", message="bad", shape="string"), errors.HyperswitchRejected),
        (Failure(status=404, code="HE_02", message="Payment does not exist"), errors.HyperswitchNotFound),
    ],
    ids=["500", "503", "429", "400", "string-error", "404"],
)
def test_error_answers_map_to_our_errors(
    client: hyperswitch.Client, fake: FakeHyperswitch, failure: Failure, expected: type[Exception]
) -> None:
    fake.fail_next("POST /payments", failure)
    with pytest.raises(expected) as raised:
        new_payment(client)
    if isinstance(raised.value, errors.HyperswitchRejected):
        assert raised.value.status == failure.status
        assert raised.value.message == failure.message
        assert raised.value.code == ("" if failure.shape == "string" else failure.code)


def test_a_timeout_is_ambiguous(psp: tuple[str, FakeHyperswitch]) -> None:
    url, fake = psp
    client = hyperswitch.Client(url, PSP_API_KEY, timeout=httpx.Timeout(0.3))
    fake.fail_next("POST /payments", Failure(hang=1.0))
    with pytest.raises(errors.HyperswitchUnavailable, match="Timeout"):
        new_payment(client)
    client.close()


def test_a_refused_connection_is_ambiguous() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = hyperswitch.Client(f"http://127.0.0.1:{port}", "k")
    with pytest.raises(errors.HyperswitchUnavailable, match="ConnectError"):
        client.get_payment("pay_x")
