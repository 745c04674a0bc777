"""The receiver on a real uvicorn: one committed row per delivery, then 200, 401, 413 or 503."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest

from receiver.app import create_app
from tests.proxy import Proxy
from tests.support import (
    OLD_SECRET,
    SAMPLES,
    SECRET,
    VECTOR,
    ServerThread,
    at_once,
    envelope,
    join,
    log_rows,
    post_webhook,
)
from veza_worker import actors, events, webhooks
from veza_worker.settings import Settings


def queued_messages(broker: dramatiq.Broker) -> int:
    return int(broker.do_qsize("webhooks"))  # type: ignore[attr-defined]


def enqueued_log_ids(broker: dramatiq.Broker) -> list[int]:
    """The log_id of every process_webhook message waiting in Redis, as a worker would decode it."""
    stored = broker.client.hvals(f"{broker.namespace}:webhooks.msgs")  # type: ignore[attr-defined]
    messages = [dramatiq.Message.decode(raw) for raw in stored]
    assert all(m.actor_name == "process_webhook" for m in messages)
    return sorted(m.args[0] for m in messages)


def test_the_vector_posted_as_hyperswitch_sends_it_is_accepted_and_enqueued(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    body = (SAMPLES / VECTOR["raw_body_file"]).read_bytes()
    response = httpx.post(f"{receiver}/webhooks/hyperswitch", content=body, headers=VECTOR["request_headers"])

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert response.json() == {"log_id": row["id"]}
    assert row["payload"].encode() == body and row["payload_raw"] is None
    assert row["signature_valid"] is True and row["signature_key_index"] == 0
    assert row["processing_result"] == "queued"
    assert row["event_type"] == "refund_succeeded"
    assert row["event_id"] == "evt_0195f87e1b3a7d40a6c2e9f51d07b8a3"
    assert row["user_agent"] == "Hyperswitch-Backend-Server"
    assert row["source_ip"] == "127.0.0.1"
    assert len(row["request_id"]) == 36  # a fresh UUID when Hyperswitch sends none
    assert queued_messages(broker) == 1


def test_a_delivery_signed_with_the_retiring_secret_is_accepted_and_says_which_key(
    receiver: str, conn: psycopg.Connection[Any]
) -> None:
    response = post_webhook(receiver, envelope(), secret=OLD_SECRET, **{"x-request-id": "req-42"})

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert row["signature_key_index"] == 1 and row["request_id"] == "req-42"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-webhook-signature-512": "0" * 128},
        {"x-webhook-signature-512": events.sign(b"another body", SECRET)},
        {"x-webhook-signature-512": "not hex at all \u00e9".encode()},
        {},
    ],
    ids=["wrong", "for-another-body", "garbage", "missing"],
)
def test_a_bad_or_missing_signature_gets_401_and_a_row_but_no_message(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, headers: dict[str, Any]
) -> None:
    response = post_webhook(receiver, envelope("payment_succeeded"), secret=None, **headers)

    assert response.status_code == 401
    [row] = log_rows(conn)
    assert row["signature_valid"] is False and row["signature_key_index"] is None
    assert row["processing_result"] == "signature_invalid"
    assert row["event_type"] == "payment_succeeded"  # kept for the forensics
    assert queued_messages(broker) == 0


def test_a_body_over_the_cap_gets_413_and_no_row(
    receiver: str, settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    cap = settings.max_webhook_payload_bytes
    exactly = b'{"event_type": "x", "pad": "' + b"a" * (cap - 30) + b'"}'
    assert len(exactly) == cap

    assert post_webhook(receiver, exactly + b" ").status_code == 413
    assert post_webhook(receiver, exactly).status_code == 200  # the cap itself is allowed
    assert len(log_rows(conn)) == 1 and queued_messages(broker) == 1


def test_a_streamed_body_without_content_length_is_cut_at_the_cap(
    receiver: str, settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(settings.max_webhook_payload_bytes // 4096 + 2):
            yield b"x" * 4096

    body = b"".join(chunks())
    headers = {"x-webhook-signature-512": events.sign(body, SECRET)}
    response = httpx.post(f"{receiver}/webhooks/hyperswitch", content=chunks(), headers=headers)

    assert response.status_code == 413
    assert log_rows(conn) == []


def test_a_raw_chunked_upload_is_refused_once_it_passes_the_cap(
    receiver: str, settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    body = b"y" * (settings.max_webhook_payload_bytes + 1)
    port = int(receiver.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /webhooks/hyperswitch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        status_line = sock.recv(200).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert log_rows(conn) == []


def test_a_body_that_is_not_json_is_recorded_with_no_event_fields(
    receiver: str, conn: psycopg.Connection[Any]
) -> None:
    response = post_webhook(receiver, b"event_type=payment_succeeded&not=json")

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert row["payload"] == "event_type=payment_succeeded&not=json"
    assert row["event_type"] is None and row["event_id"] is None


def test_invalid_utf8_and_nul_bytes_are_stored_replaced_and_the_exact_bytes_kept(
    receiver: str, conn: psycopg.Connection[Any]
) -> None:
    body = b'{"event_type": "payment_succeeded", "event_id": "evt_\xff\xfe", "x": "a\x00b"}'

    response = post_webhook(receiver, body)

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert "\ufffd" in row["payload"] and "\x00" not in row["payload"]
    assert bytes(row["payload_raw"]) == body
    assert row["event_type"] is None  # not valid JSON, so nothing was peeked


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_type": "a\\u0000b", "event_id": "\\ud800"}',
        b'{"event_type": 42, "event_id": ["evt"]}',
        b"[" * 100_000 + b"]" * 100_000,
        b"1" * 5000,
        b'"just a string"',
        b"",
    ],
    ids=["escaped-nul-and-lone-surrogate", "wrong-types", "deep", "huge-int", "scalar", "empty"],
)
def test_odd_json_never_costs_a_5xx(receiver: str, conn: psycopg.Connection[Any], body: bytes) -> None:
    response = post_webhook(receiver, body)

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert row["processing_result"] == "queued"
    for field in ("event_type", "event_id"):
        assert row[field] is None or "\x00" not in row[field]


def test_headers_in_odd_encodings_are_stored_as_text(receiver: str, conn: psycopg.Connection[Any]) -> None:
    body = envelope()
    headers = [
        (b"x-webhook-signature-512", events.sign(body, SECRET).encode()),
        (b"user-agent", "Hyperswitch/ünïcode".encode()),
        (b"x-request-id", b"\xff\xfe-latin"),
    ]
    response = httpx.post(f"{receiver}/webhooks/hyperswitch", content=body, headers=headers)

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert row["user_agent"] == "Hyperswitch/ünïcode"
    assert row["request_id"] == "\ufffd\ufffd-latin"


@pytest.mark.parametrize("forwarded_for", ["not-an-ip", "unknown", "_hidden"])
def test_a_client_address_that_is_not_an_ip_is_stored_as_text(
    settings: Settings, conn: psycopg.Connection[Any], forwarded_for: str
) -> None:
    app = create_app(settings)
    with ServerThread(app, proxy_headers=True, forwarded_allow_ips="*") as server:
        response = post_webhook(server.url, envelope(), **{"x-forwarded-for": forwarded_for})

    assert response.status_code == 200
    assert log_rows(conn)[0]["source_ip"] == forwarded_for


def test_health_and_readiness(receiver: str) -> None:
    assert httpx.get(f"{receiver}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{receiver}/readyz")
    assert ready.status_code == 200 and ready.json() == {"postgres": "ok", "redis": "ok"}


@pytest.fixture
def postgres_proxy() -> Iterator[Proxy]:
    proxy = Proxy(5432)
    proxy.up()
    yield proxy
    proxy.down()


def test_postgres_down_gets_503_with_nothing_written_or_enqueued(
    settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker, postgres_proxy: Proxy
) -> None:
    via_proxy = psycopg.conninfo.make_conninfo(
        settings.database_url, host="127.0.0.1", port=postgres_proxy.port
    )
    with ServerThread(create_app(replace(settings, database_url=via_proxy))) as server:
        assert post_webhook(server.url, envelope()).status_code == 200
        postgres_proxy.down()

        assert post_webhook(server.url, envelope()).status_code == 503  # pooled connection cut
        assert post_webhook(server.url, envelope()).status_code == 503  # no new connection either
        assert httpx.get(f"{server.url}/readyz").json()["postgres"].startswith("unavailable")
        postgres_proxy.up()
        assert post_webhook(server.url, envelope()).status_code == 200

    assert [r["processing_result"] for r in log_rows(conn)] == ["queued", "queued"]
    assert queued_messages(broker) == 2


def test_redis_down_still_answers_200_and_the_redrive_delivers_exactly_once(
    settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    redis_proxy = Proxy(6379)  # never up: Redis refuses every connection
    via_proxy = settings.redis_url.replace(":6379/", f":{redis_proxy.port}/")
    with ServerThread(create_app(replace(settings, redis_url=via_proxy))) as server:
        response = post_webhook(server.url, envelope("payment_processing"))
        assert httpx.get(f"{server.url}/readyz").json()["redis"].startswith("unavailable")

    assert response.status_code == 200
    [row] = log_rows(conn)
    assert row["processing_result"] == "queued"

    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '3 minutes'")
    with psycopg.connect(settings.database_url) as worker_conn:
        assert webhooks.redrive(worker_conn, actors.process_webhook.send) == {"redriven": 1}
        assert webhooks.redrive(worker_conn, actors.process_webhook.send) == {"redriven": 0}
    join(broker)
    [row] = log_rows(conn)
    assert row["processing_result"] == "skipped: informational"
    assert row["processed_at"] is not None


def test_access_logs_carry_neither_body_nor_signature(
    receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"event_type": "payment_succeeded", "secret_marker": "BODY-MARKER-123"}).encode()
    signature = events.sign(body, SECRET)
    with caplog.at_level(logging.DEBUG):
        assert post_webhook(receiver, body).status_code == 200
        assert (
            post_webhook(receiver, body, secret=None, **{"x-webhook-signature-512": "f" * 128}).status_code
            == 401
        )
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "POST /webhooks/hyperswitch" in text  # the access log did run
    assert "BODY-MARKER-123" not in text and signature not in text and SECRET not in text


def test_concurrent_deliveries_share_commits_and_each_answer_names_its_own_row(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    """Group commit: many deliveries per INSERT, and every answer's log_id is that delivery's row."""
    bodies = [envelope(event_id=f"evt_group_{n}") for n in range(96)]
    answers: dict[bytes, int] = {}

    def post(body: bytes) -> None:
        response = post_webhook(receiver, body)
        assert response.status_code == 200
        answers[body] = response.json()["log_id"]

    at_once(*[lambda body=body: post(body) for body in bodies])

    stored = {r["id"]: r["payload"].encode() for r in log_rows(conn)}
    assert len(stored) == 96 and all(stored[log_id] == body for body, log_id in answers.items())
    # each batch is enqueued in one round trip after its commit: every row once, no other
    assert enqueued_log_ids(broker) == sorted(stored)


def test_a_batch_mixing_forged_and_valid_deliveries_enqueues_only_the_valid_rows(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    valid = [envelope(event_id=f"evt_mixed_{n}") for n in range(24)]
    forged = [envelope(event_id=f"evt_forged_{n}") for n in range(24)]

    def post(body: bytes, secret: str | None) -> None:
        expected = 200 if secret == SECRET else 401
        assert post_webhook(receiver, body, secret=secret).status_code == expected

    at_once(
        *[lambda body=body: post(body, SECRET) for body in valid],
        *[lambda body=body: post(body, "not-the-secret") for body in forged],
    )

    rows = log_rows(conn)
    assert sum(r["signature_valid"] for r in rows) == 24 and len(rows) == 48  # forged ones stored too
    assert enqueued_log_ids(broker) == sorted(r["id"] for r in rows if r["signature_valid"])


def test_a_batch_the_database_refuses_is_written_row_by_row(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: Any) -> list[int]:
        raise psycopg.errors.CharacterNotInRepertoire("one row of the batch cannot be stored")

    monkeypatch.setattr(webhooks, "insert_logs", refused)
    bodies = [envelope() for _ in range(8)]

    def post(body: bytes) -> None:
        assert post_webhook(receiver, body).status_code == 200

    at_once(*[lambda body=body: post(body) for body in bodies])

    rows = log_rows(conn)
    assert sorted(r["payload"].encode() for r in rows) == sorted(bodies)
    assert enqueued_log_ids(broker) == sorted(r["id"] for r in rows)
