"""Webhook bodies without a server: the shared signature vector, and the envelope shapes parsed alike."""

from __future__ import annotations

import json

from tests.support import OLD_SECRET, SAMPLES, SECRET, VECTOR
from veza_worker import events


def test_the_shared_signature_vector_verifies() -> None:
    body = (SAMPLES / VECTOR["raw_body_file"]).read_bytes()
    expected = VECTOR["request_headers"]["X-Webhook-Signature-512"]
    assert events.sign(body, SECRET) == expected
    assert events.matching_secret(body, expected, (OLD_SECRET, SECRET)) == 1


def test_the_three_envelope_shapes_name_the_same_object() -> None:
    obj = {"payment_id": "pay_1", "status": "succeeded", "amount": 100}
    shapes = [
        {"event_type": "payment_succeeded", "content": {"type": "payment_details", "object": obj}},
        {"event_type": "payment_succeeded", "object": obj},
        {"event_type": "payment_succeeded", **obj},
    ]
    parsed = [events.parse(json.dumps(shape).encode()) for shape in shapes]
    assert {(e.event_type, e.data["payment_id"], e.data["amount"]) for e in parsed} == {
        ("payment_succeeded", "pay_1", 100)
    }
    assert parsed[0].object_type == "payment_details"
