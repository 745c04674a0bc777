"""The reconciler and the worker never make things worse: misconfiguration is not absence, a PSP
outage ends a phase early, a read error starts no cool-down, poison input ends at once, any field
length is storable, and seller balances are locked in one order by every writer."""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import psycopg
import pytest

from tests.factories import Tick, order_status, stuck_order
from tests.fake_hyperswitch import Failure, FakeHyperswitch
from tests.support import (
    SECRET,
    at_once,
    envelope,
    log_rows,
    make_order,
    make_pending_refund,
    post_webhook,
    process,
    row,
    rows,
    store_event,
)
from veza_worker import hyperswitch, ops, orders
from veza_worker.settings import Settings

SELLERS = (uuid.UUID(int=1), uuid.UUID(int=2))


def a_paid_order(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch
) -> uuid.UUID:
    """An order we hold as completed, whose payment the PSP holds: what the canary asks about."""
    order_id, _ = stuck_order(conn, client, fake, "succeeded")
    conn.execute("UPDATE orders SET status = 'completed', completed_at = now() WHERE id = %s", [order_id])
    return order_id


# -- misconfiguration is not absence ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["he_02", "html_404"])
def test_a_wrong_api_key_or_url_changes_no_row(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    tick: Tick,
) -> None:
    a_paid_order(conn, client, fake)
    pending = [stuck_order(conn, client, fake, "requires_payment_method")[0] for _ in range(4)]
    refund_id = make_pending_refund(conn, a_paid_order(conn, client, fake))
    conn.execute("UPDATE refunds SET created_at = now() - interval '1 hour' WHERE id = %s", [refund_id])
    fake.misconfigured = mode

    counts = tick()

    assert [order_status(conn, o) for o in pending] == ["pending"] * 4
    assert row(conn, "SELECT status FROM refunds")["status"] == "pending"
    assert log_rows(conn) == []  # nothing synthesized
    if mode == "he_02":
        assert counts["orders"] == {"checked": 4, "psp_misconfigured": 4}
        assert counts["orphan_refunds"] == {"checked": 1, "psp_misconfigured": 1}
        errors = [
            r for r in caplog.records if r.levelname == "ERROR" and "HYPERSWITCH_API_KEY" in r.getMessage()
        ]
        assert len(errors) == 2  # one per phase that met it, not one per row
    else:  # an HTML 404 is an unavailable PSP
        assert counts["orders"] == {"checked": 3, "psp_error": 3, "stopped_early": True}


def test_with_the_right_configuration_a_payment_the_psp_never_had_still_fails_the_order(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Tick,
) -> None:
    a_paid_order(conn, client, fake)  # the canary: found
    order_id, _ = stuck_order(conn, client, fake, None)

    assert tick()["orders"] == {"checked": 1, "settled": 1}
    assert order_status(conn, order_id) == "failed"


# -- a PSP outage, and the cool-down ---------------------------------------------------------------


def test_an_outage_stops_the_phase_after_three_read_errors_and_a_manual_tick_retries(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Tick,
) -> None:
    stuck = [stuck_order(conn, client, fake, "succeeded")[0] for _ in range(6)]
    for _ in range(3):
        fake.fail_next("GET /payments", Failure(status=504, hang=0.3))

    first = tick()

    assert first["orders"] == {"checked": 3, "psp_error": 3, "stopped_early": True}
    assert [order_status(conn, o) for o in stuck] == ["pending"] * 6
    second = tick()  # at once: no cool-down was started by the errors
    assert second["orders"] == {"checked": 6, "settled": 6}


def test_stuck_counts_from_the_payment_creation_not_the_order_creation(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Tick,
) -> None:
    a_paid_order(conn, client, fake)
    order_id = make_order(conn, [(SELLERS[0], 500)])
    conn.execute("UPDATE orders SET created_at = now() - interval '3 hours' WHERE id = %s", [order_id])
    fake.fail_next("POST /payments", Failure(status=502))  # confirm-order's create is lost on the way
    with pytest.raises(Exception, match="will be reconciled"):
        orders.confirm(conn, client, order_id)

    assert tick()["orders"] == {"checked": 0}  # its payment is seconds old
    assert order_status(conn, order_id) == "pending"
    assert row(conn, "SELECT payment_created_at FROM orders WHERE id = %s", order_id)["payment_created_at"]


def test_an_order_payment_never_final_is_cancelled_after_the_expiry_and_the_order_fails(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    tick: Tick,
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "requires_payment_method", age="3 days")

    counts = tick()

    assert counts["orders"] == {"checked": 1, "cancelled": 1}
    assert fake.payments[payment_id]["status"] == "cancelled"
    assert order_status(conn, order_id) == "failed"
    assert rows(conn, "SELECT 1 FROM reconcile_state") == []  # settled rows are not remembered


# -- rows that fail in our own code ----------------------------------------------------------------


def test_a_row_that_raises_is_given_up_after_three_ticks(
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: Settings,
    tick: Tick,
) -> None:
    order_id, payment_id = stuck_order(conn, client, fake, "succeeded")

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(orders, "apply_payment", broken)
    for _ in range(3):
        assert tick()["orders"] == {"checked": 1, "errors": 1}
        conn.execute("UPDATE reconcile_state SET last_checked_at = last_checked_at - interval '2 minutes'")

    assert tick()["orders"] == {"checked": 0}
    assert any("needs a human" in r.getMessage() and str(order_id) in r.getMessage() for r in caplog.records)
    # The case is one discrepancy, opened with the row's state, and what status counts (once).
    found = rows(conn, "SELECT kind, order_id, subject FROM discrepancies WHERE resolved_at IS NULL")
    assert found == [{"kind": "reconcile_gave_up", "order_id": order_id, "subject": payment_id}]
    document, _healthy = ops.status(conn, settings)
    assert [h["why"].split(":")[0] for h in document["needs_a_human"]] == ["reconcile_gave_up"]
    assert ops.gauges(conn, settings)["needs_human"] == 1


# -- poison input and any length -------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_a_4kb_event_id_and_request_id_get_a_contract_answer_and_a_row(
    receiver: str, conn: psycopg.Connection[Any], broker: dramatiq.Broker, signed: bool
) -> None:
    body = envelope(event_id="evt_" + "x" * 4096)
    response = post_webhook(
        receiver, body, secret=SECRET if signed else "wrong", **{"x-request-id": "r" * 4096}
    )

    assert response.status_code == (200 if signed else 401)
    [stored] = log_rows(conn)
    assert len(stored["event_id"]) == 4100 and len(stored["request_id"]) == 4096


def test_a_nul_in_a_refund_error_message_is_stored_cleaned(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = a_paid_order(conn, client, fake)
    refund_id = make_pending_refund(conn, order_id)
    psp_id = row(conn, "SELECT hyperswitch_refund_id FROM refunds")["hyperswitch_refund_id"]

    log_id = store_event(
        conn, "refund_failed", {"refund_id": psp_id, "status": "failed", "error_message": "bad\x00card\udfff"}
    )

    assert process(settings, log_id, final_attempt=False) == "ok"
    assert (
        row(conn, "SELECT error_message FROM refunds WHERE id = %s", refund_id)["error_message"]
        == "bad\ufffdcard\ufffd"
    )


# -- one lock order for seller balances ------------------------------------------------------------


def paid(payment_id: str) -> dict[str, Any]:
    return {"payment_id": payment_id, "status": "succeeded", "amount": 200, "currency": "USD"}


def test_completions_and_refunds_sharing_sellers_never_deadlock(
    conn: psycopg.Connection[Any], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """50 rounds: one order completing while another is refunded, both paying the same two
    sellers, their items listed in opposite orders. Every writer locks balances by seller_id."""
    for n in range(50):
        refunded = make_order(conn, [(SELLERS[1], 100), (SELLERS[0], 100)], payment_id=f"pay_r{n:025d}")
        assert process(settings, store_event(conn, "payment_succeeded", paid(f"pay_r{n:025d}"))) == "ok"
        make_pending_refund(conn, refunded, f"ref_r{n:025d}")
        make_order(conn, [(SELLERS[0], 100), (SELLERS[1], 100)], payment_id=f"pay_c{n:025d}")
        completion = store_event(conn, "payment_succeeded", paid(f"pay_c{n:025d}"))
        refund = store_event(conn, "refund_succeeded", {"refund_id": f"ref_r{n:025d}", "status": "succeeded"})
        results: list[Any] = []

        def apply(log_id: int, results: list[Any] = results) -> None:
            results.append(process(settings, log_id, final_attempt=False))

        at_once(lambda: apply(completion), lambda: apply(refund))  # noqa: B023 (joined before the next round)
        assert results == ["ok", "ok"], (n, results)
    balances = rows(conn, "SELECT balance FROM seller_balances ORDER BY seller_id")
    assert [b["balance"] for b in balances] == [50 * 100, 50 * 100]
    assert not [r for r in caplog.records if "deadlock" in r.getMessage().lower()]
