"""The automatic-refund outbox: sent as soon as the change that owes it commits, never before, the
sweep as its fallback, and never twice however many senders run at once."""

from __future__ import annotations

import ast
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.fake_hyperswitch import Failure, FakeHyperswitch, settle_payment, webhook_body
from tests.support import (
    PSP_API_KEY,
    at_once,
    make_order,
    post_webhook,
    process,
    row,
    rows,
    store_event,
    wait_for,
)
from veza_worker import automatic_refunds, hyperswitch, orders
from veza_worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def failed_order_paid_late(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> dict[str, Any]:
    """An order whose payment failed, then succeeded at the PSP after all: its webhook's object."""
    order_id = make_order(conn, [(uuid.uuid4(), 4599)])
    payment_id = orders.confirm(conn, client, order_id)["payment_id"]
    failed = {**fake.payments[payment_id], "status": "failed"}
    assert process(settings, store_event(conn, "payment_failed", failed)) == "ok"
    return dict(settle_payment(fake, payment_id, "succeeded"))


@pytest.fixture
def psp_worker(
    psp: tuple[str, FakeHyperswitch], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> dramatiq.Worker:
    """The real in-process worker, booted with the fake PSP configured (and no clock anywhere)."""
    monkeypatch.setenv("HYPERSWITCH_ENABLED", "true")
    monkeypatch.setenv("HYPERSWITCH_URL", psp[0])
    monkeypatch.setenv("HYPERSWITCH_API_KEY", PSP_API_KEY)
    worker: dramatiq.Worker = request.getfixturevalue("worker")  # boots after the variables are set
    return worker


def test_a_late_success_is_refunded_within_seconds_of_its_webhook_without_a_clock(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    psp_worker: dramatiq.Worker,
    receiver: str,
) -> None:
    late = failed_order_paid_late(conn, settings, client, fake)

    posted_at = time.monotonic()
    assert post_webhook(receiver, webhook_body("payment_succeeded", late)).status_code == 200
    wait_for(lambda: bool(fake.calls_to("POST", "/refunds")), timeout=10)

    assert time.monotonic() - posted_at < 10
    [posted] = fake.calls_to("POST", "/refunds")
    refund = row(conn, "SELECT hyperswitch_refund_id, amount, automatic FROM refunds")
    assert posted.body["refund_id"] == refund["hyperswitch_refund_id"] and posted.body["amount"] == 4599
    wait_for(lambda: row(conn, "SELECT submitted_at FROM refunds")["submitted_at"] is not None)
    assert rows(conn, "SELECT 1 FROM sweep_runs") == []  # no sweep sent it


def test_the_refund_is_enqueued_only_once_its_transaction_has_committed(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 500)], status="failed", payment_id="pay_" + "c" * 26)
    seen_by_sender: list[bool] = []

    def enqueue(refund_id: uuid.UUID) -> None:  # what a worker would find, on its own connection
        with psycopg.connect(database_url) as other:
            seen_by_sender.append(
                bool(other.execute("SELECT 1 FROM refunds WHERE id = %s", [refund_id]).fetchone())
            )

    with psycopg.connect(database_url) as own, automatic_refunds.enqueue_after_commit(own, enqueue):
        with own.transaction():
            opened = automatic_refunds.open_refund(
                own, order_id=order_id, amount=500, currency="USD", note="automatic: test"
            )
            assert opened and seen_by_sender == []
        assert seen_by_sender == []  # committed, but the block goes on: it may commit more

    assert seen_by_sender == [True]


def test_a_refund_rolled_back_with_its_transaction_is_never_enqueued(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 500)], status="failed", payment_id="pay_" + "d" * 26)
    enqueued: list[uuid.UUID] = []

    with psycopg.connect(database_url) as own, automatic_refunds.enqueue_after_commit(own, enqueued.append):
        with pytest.raises(RuntimeError), own.transaction():
            automatic_refunds.open_refund(
                own, order_id=order_id, amount=500, currency="USD", note="automatic: x"
            )
            raise RuntimeError("the handler failed after opening it")

    assert enqueued == [] and rows(conn, "SELECT 1 FROM refunds") == []


def test_enqueueing_inside_an_open_transaction_is_refused(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 500)], status="failed", payment_id="pay_" + "e" * 26)
    with psycopg.connect(database_url) as own:  # not autocommit: the INSERT opens a transaction
        with pytest.raises(RuntimeError, match="after their transaction ends"):
            with automatic_refunds.enqueue_after_commit(own, lambda refund_id: None):
                automatic_refunds.open_refund(own, order_id=order_id, amount=500, currency="USD", note="x")
        own.rollback()


def test_a_lost_enqueue_is_left_to_the_sweep_which_sends_it(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = failed_order_paid_late(conn, settings, client, fake)
    log_id = store_event(conn, "payment_succeeded", late)

    def redis_down(refund_id: uuid.UUID) -> None:
        raise ConnectionError("redis unreachable")

    with (
        psycopg.connect(settings.database_url) as own,
        automatic_refunds.enqueue_after_commit(own, redis_down),
    ):
        assert process(settings, log_id) == "ok"

    assert any("left for the sweep" in r.getMessage() for r in caplog.records)
    assert fake.calls_to("POST", "/refunds") == []
    assert automatic_refunds.send_unsent(conn, client) == {"sent": 1, "rejected": 0, "ambiguous": 0}
    assert len(fake.calls_to("POST", "/refunds")) == 1


# -- never twice -----------------------------------------------------------------------------------


@pytest.fixture
def slow_refunds(fake: FakeHyperswitch) -> Iterator[threading.Event]:
    """The PSP takes half a second to answer a refund create: two senders overlap for sure."""
    answering = threading.Event()

    def slowly(_refund: dict[str, Any]) -> None:
        answering.set()
        time.sleep(0.5)

    fake.before_reply["POST /refunds"] = slowly
    yield answering
    fake.before_reply.pop("POST /refunds")


def test_the_immediate_send_and_the_sweep_at_once_refund_once(
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    slow_refunds: threading.Event,
) -> None:
    late = failed_order_paid_late(conn, settings, client, fake)
    assert process(settings, store_event(conn, "payment_succeeded", late)) == "ok"
    refund_id = row(conn, "SELECT id FROM refunds")["id"]
    outcomes: dict[str, Any] = {}

    def immediate() -> None:
        with psycopg.connect(settings.database_url) as own:
            outcomes["immediate"] = automatic_refunds.send(own, client, refund_id)

    def sweep() -> None:
        assert slow_refunds.wait(5)  # the first sender holds the row, mid-call
        with psycopg.connect(settings.database_url) as own:
            outcomes["sweep"] = automatic_refunds.send_unsent(own, client)

    at_once(immediate, sweep)

    assert outcomes == {"immediate": "sent", "sweep": {"sent": 0, "rejected": 0, "ambiguous": 0}}
    assert len(fake.calls_to("POST", "/refunds")) == 1
    assert automatic_refunds.send(conn, client, refund_id) is None  # submitted: nothing left to send
    assert len(fake.calls_to("POST", "/refunds")) == 1


def test_after_an_ambiguous_answer_the_next_send_repeats_the_same_refund_id(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> None:
    late = failed_order_paid_late(conn, settings, client, fake)
    assert process(settings, store_event(conn, "payment_succeeded", late)) == "ok"
    refund_id = row(conn, "SELECT id FROM refunds")["id"]
    fake.fail_next("POST /refunds", Failure(status=502, acted=True))  # the PSP refunded, then 502

    assert automatic_refunds.send(conn, client, refund_id) == "ambiguous"
    assert automatic_refunds.send(conn, client, refund_id) == "sent"  # HE_01 → GET: the same refund

    posted = fake.calls_to("POST", "/refunds")
    assert len(posted) == 2 and posted[0].body["refund_id"] == posted[1].body["refund_id"]
    assert len(fake.refunds) == 1


# -- the module stands alone -----------------------------------------------------------------------


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((ROOT / "veza_worker" / f"{module}.py").read_text())
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "veza_worker"
        for alias in node.names
    }


def test_orders_no_longer_import_refunds_and_the_outbox_imports_no_state_machine() -> None:
    assert "refunds" not in imported_modules("orders")
    assert imported_modules("automatic_refunds") <= {"db", "discrepancies", "errors", "hyperswitch", "ledger"}
