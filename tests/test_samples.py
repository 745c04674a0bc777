"""Every shared Hyperswitch sample, posted signed to a real uvicorn, ends in the right rows."""

from __future__ import annotations

import json
import uuid
from typing import Any

import dramatiq
import httpx
import psycopg

from tests.support import (
    SAMPLES,
    VECTOR,
    join,
    log_rows,
    make_order,
    make_pending_refund,
    post_webhook,
    row,
    rows,
)
from veza_worker import ledger

SELLER = uuid.uuid4()


def sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return document


def test_the_payment_succeeded_sample_completes_its_order(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    paid = sample("payment_succeeded.json")["content"]["object"]
    order_id = make_order(conn, [(SELLER, 4000), (SELLER, 599)], payment_id=paid["payment_id"])

    response = post_webhook(receiver, (SAMPLES / "payment_succeeded.json").read_bytes())
    join(broker)

    assert response.status_code == 200
    assert log_rows(conn)[0]["processing_result"] == "ok"
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "completed"
    assert len(rows(conn, "SELECT 1 FROM licenses WHERE order_id = %s", order_id)) == 2
    assert row(conn, "SELECT balance FROM seller_balances")["balance"] == 4599


def test_the_signed_refund_vector_refunds_its_order(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    refunded = sample("refund_succeeded.json")["content"]["object"]
    order_id = make_order(conn, [(SELLER, 1500)], payment_id=refunded["payment_id"], status="completed")
    with conn.transaction():  # paid: the seller's 1500 posted as the payment handler would
        ledger.post(conn, ledger.order_paid(order_id, "USD", 1500, {SELLER: 1500}))
    conn.execute(
        "INSERT INTO seller_transfers (order_id, seller_id, amount, currency) VALUES (%s, %s, 1500, 'USD')",
        [order_id, SELLER],
    )
    conn.execute(
        "INSERT INTO licenses (order_id, order_item_id, buyer_id, track_id)"
        " SELECT o.id, i.id, o.buyer_id, i.track_id FROM orders o JOIN order_items i ON i.order_id = o.id"
    )
    refund_id = make_pending_refund(conn, order_id, refunded["refund_id"])

    body = (SAMPLES / VECTOR["raw_body_file"]).read_bytes()
    response = httpx.post(f"{receiver}/webhooks/hyperswitch", content=body, headers=VECTOR["request_headers"])
    join(broker)

    assert response.status_code == 200
    assert log_rows(conn)[0]["processing_result"] == "ok"
    refund = row(conn, "SELECT status, succeeded_at FROM refunds WHERE id = %s", refund_id)
    assert refund["status"] == "succeeded" and refund["succeeded_at"] is not None
    assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "refunded"
    assert row(conn, "SELECT revoked_at FROM licenses")["revoked_at"] is not None
    assert row(conn, "SELECT balance FROM seller_balances")["balance"] == 0
    assert row(conn, "SELECT status FROM seller_transfers")["status"] == "reversed"


def test_the_pretty_refund_sample_is_the_same_event_and_so_a_duplicate(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    refunded = sample("refund_succeeded.json")["content"]["object"]
    order_id = make_order(conn, [(SELLER, 1500)], payment_id=refunded["payment_id"], status="completed")
    make_pending_refund(conn, order_id, refunded["refund_id"])

    for name in ("refund_succeeded.compact_body.json", "refund_succeeded.json"):
        post_webhook(receiver, (SAMPLES / name).read_bytes())
        join(broker)

    assert [r["processing_result"] for r in log_rows(conn)] == ["ok", "skipped: duplicate event"]
