"""Every money movement posts once, exact per account, whatever replays, races or reorders; the
PSP's facts post whatever the order's status (F1, F2); `audit` catches what Postgres cannot refuse;
discrepancies are rows ops list and resolve."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.factories import (
    BUYER,
    REFUND_WINDOW,
    SELLER_A,
    SELLER_B,
    assert_audit_ok,
    deliver,
    moved,
    open_dispute,
    payment_of,
    psp_settles,
    three_items,
)
from tests.fake_hyperswitch import (
    FakeHyperswitch,
    dispute,
    refund_from_dashboard,
    settle_payment,
    settle_refund,
)
from tests.support import at_once, make_order, process, row, rows, run_cli, store_event
from veza_worker import automatic_refunds, errors, hyperswitch, ledger, refunds
from veza_worker.settings import Settings

NAMES = {str(SELLER_A): "A", str(SELLER_B): "B"}


def books(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Every account's balance that is not zero, sellers named A and B."""
    found = rows(conn, "SELECT account, sum(amount) AS s FROM ledger_entries GROUP BY account")
    named = {}
    for r in found:
        if r["s"]:
            kind, *rest = r["account"].split(":")
            named[":".join([kind, NAMES.get(rest[0], rest[0]), *rest[1:]] if rest else [kind])] = int(r["s"])
    return named


def items_of(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> dict[str, uuid.UUID]:
    """The three items of `three_items` by name: a500, a300, b200."""
    found = rows(conn, "SELECT id, seller_id, amount FROM order_items WHERE order_id = %s", order_id)
    return {("a" if r["seller_id"] == SELLER_A else "b") + str(r["amount"]): r["id"] for r in found}


def order_of(conn: psycopg.Connection[Any], order_id: uuid.UUID) -> tuple[str, int, int]:
    """(status, refunded_amount, live licenses)."""
    order = row(conn, "SELECT status, refunded_amount FROM orders WHERE id = %s", order_id)
    live = row(
        conn, "SELECT count(*) AS n FROM licenses WHERE order_id = %s AND revoked_at IS NULL", order_id
    )
    return order["status"], order["refunded_amount"], live["n"]


def open_kinds(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r["kind"] for r in rows(conn, "SELECT kind FROM discrepancies WHERE resolved_at IS NULL ORDER BY id")
    ]


def replayed(conn: psycopg.Connection[Any], settings: Settings, event_type: str, obj: dict[str, Any]) -> None:
    """The same PSP object delivered three more times, as fresh deliveries: nothing changes."""
    before = books(conn)
    for _ in range(3):
        assert process(settings, store_event(conn, event_type, dict(obj))) != "ok" or books(conn) == before
    assert books(conn) == before


def test_an_order_paid_partly_refunded_disputed_and_won_posts_each_step_once(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    """The worked example of docs/ledger.md, with the balances after each step."""
    order_id = three_items(conn, settings, fake)
    assert books(conn) == {"world": -1000, "seller:A:held": 800, "seller:B:held": 200}
    replayed(conn, settings, "payment_succeeded", fake.payments[payment_of(conn, order_id)])

    out = refunds.request(
        conn, client, order_id, BUYER, items=[items_of(conn, order_id)["b200"]], refund_window=REFUND_WINDOW
    )
    psp_settles(conn, settings, fake, out)
    assert books(conn) == {"world": -800, "seller:A:held": 800}
    replayed(conn, settings, "refund_succeeded", fake.refunds[out["hyperswitch_refund_id"]])

    opened = dispute(fake, payment_of(conn, order_id), "dispute_opened", amount="800")
    assert deliver(conn, settings, opened) == "ok"
    assert books(conn) == {}  # the bank took the 800 back: nobody holds anything
    assert order_of(conn, order_id) == ("disputed", 200, 2)
    replayed(conn, settings, "dispute_opened", opened)

    won = moved(fake, opened, "dispute_won")
    assert deliver(conn, settings, won) == "ok"
    assert books(conn) == {"world": -800, "seller:A:held": 800}
    assert order_of(conn, order_id) == ("completed", 200, 2)
    replayed(conn, settings, "dispute_won", won)

    keys = [
        r["key"].rsplit(":", 1)[-1]
        for r in rows(conn, "SELECT key FROM ledger_transactions ORDER BY created_at")
    ]
    assert keys == ["paid", "succeeded", "opened", "closed"]
    logged = rows(conn, "SELECT log_id FROM ledger_transactions")
    assert all(r["log_id"] is not None for r in logged)  # each names the delivery that caused it
    assert open_kinds(conn) == []
    assert_audit_ok(conn)


def test_one_refund_success_delivered_twice_at_once_posts_once(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    out = refunds.request(conn, client, order_id, BUYER, refund_window=REFUND_WINDOW)
    refund = settle_refund(fake, out["hyperswitch_refund_id"], "succeeded")
    first, second = (store_event(conn, "refund_succeeded", dict(refund)) for _ in range(2))
    results: list[Any] = []
    at_once(
        lambda: results.append(process(settings, first)), lambda: results.append(process(settings, second))
    )

    assert sorted(results) == ["ok", "skipped: refund already succeeded"]
    assert books(conn) == {}
    assert order_of(conn, order_id) == ("refunded", 1000, 0)
    assert_audit_ok(conn)


def late_success_for_a_failed_order(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> str:
    """A payment of 700 succeeds for an order we hold failed: kept in suspense, its automatic refund
    sent; the refund's PSP id."""
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    make_order(conn, [(SELLER_A, 700)], status="failed", payment_id=payment_id)
    late = {"payment_id": payment_id, "status": "succeeded", "amount": 700, "currency": "USD"}
    fake.payments[payment_id] = {**late, "client_secret": "cs", "metadata": {}}
    settle_payment(fake, payment_id, "succeeded")
    assert process(settings, store_event(conn, "payment_succeeded", late)) == "ok"
    assert books(conn) == {"world": -700, "platform:suspense": 700}
    assert automatic_refunds.send_unsent(conn, client)["sent"] == 1
    return str(row(conn, "SELECT hyperswitch_refund_id FROM refunds")["hyperswitch_refund_id"])


def test_money_kept_for_nothing_sits_in_suspense_until_its_automatic_refund_succeeds(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    psp_id = late_success_for_a_failed_order(conn, client, fake, settings)
    refund = settle_refund(fake, psp_id, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", dict(refund))) == "ok"
    assert books(conn) == {}
    replayed(conn, settings, "refund_succeeded", refund)
    assert_audit_ok(conn)


def test_an_automatic_refund_the_psp_fails_keeps_the_money_in_suspense_with_a_discrepancy(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    psp_id = late_success_for_a_failed_order(conn, client, fake, settings)
    failed = settle_refund(fake, psp_id, "failed", "card closed")

    assert process(settings, store_event(conn, "refund_failed", dict(failed))) == "ok"

    assert books(conn) == {"world": -700, "platform:suspense": 700}
    assert open_kinds(conn) == ["automatic_refund_failed"]
    assert_audit_ok(conn)  # suspense with a failed automatic refund is a human's, not a violation


# -- the review's sequences -------------------------------------------------------------------------


def test_f1_a_lost_dispute_on_an_order_whose_refund_failed_charges_it_back(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    out = refunds.request(conn, client, order_id, BUYER, refund_window=REFUND_WINDOW)
    opened = open_dispute(conn, settings, fake, order_id)  # while the refund is pending: posted all the same
    assert order_of(conn, order_id)[0] == "disputed"
    psp_settles(conn, settings, fake, out, "failed")
    assert order_of(conn, order_id)[0] == "disputed"

    assert deliver(conn, settings, moved(fake, opened, "dispute_lost")) == "ok"

    assert order_of(conn, order_id) == ("charged_back", 0, 0)
    assert books(conn) == {}  # paid 1000, the bank took 1000 back; the sellers hold nothing
    transfers = {
        r["status"] for r in rows(conn, "SELECT status FROM seller_transfers WHERE order_id = %s", order_id)
    }
    assert transfers == {"reversed"}
    assert_audit_ok(conn)


def test_f1_a_second_dispute_on_a_disputed_order_takes_nothing_twice(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    first = dispute(fake, payment_of(conn, order_id), "dispute_opened")
    second = dispute(fake, payment_of(conn, order_id), "dispute_opened")
    assert deliver(conn, settings, first) == "ok"
    assert deliver(conn, settings, second) == "ok"
    assert books(conn) == {"world": 1000, "platform:unallocated": -1000}  # the bank took it twice
    assert open_kinds(conn) == ["dispute_unassigned"]

    assert deliver(conn, settings, moved(fake, first, "dispute_lost")) == "ok"
    assert deliver(conn, settings, moved(fake, second, "dispute_lost")) == "ok"

    assert order_of(conn, order_id) == ("charged_back", 0, 0)
    assert books(conn) == {"world": 1000, "platform:unallocated": -1000}
    assert_audit_ok(conn)


def test_f2_a_dashboard_refund_on_a_disputed_order_is_posted_against_its_items(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    opened = open_dispute(conn, settings, fake, order_id)
    dashboard = refund_from_dashboard(fake, payment_of(conn, order_id), 1000, "succeeded")

    assert process(settings, store_event(conn, "refund_succeeded", dict(dashboard))) == "ok"
    assert books(conn) == {"world": 1000, "platform:unallocated": -1000}  # refunded and charged back
    assert open_kinds(conn) == ["refund_of_disputed_items"]
    assert order_of(conn, order_id) == ("disputed", 1000, 0)

    assert deliver(conn, settings, moved(fake, opened, "dispute_won")) == "ok"

    # The bank gave the 1000 back; the buyer keeps the refund; the sellers get nothing back.
    assert books(conn) == {}
    assert order_of(conn, order_id) == ("refunded", 1000, 0)
    assert_audit_ok(conn)


def test_f2_a_dashboard_refund_beside_our_pending_one_takes_the_items_left(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    items = items_of(conn, order_id)
    ours = refunds.request(conn, client, order_id, BUYER, items=[items["a500"]], refund_window=REFUND_WINDOW)
    dashboard = refund_from_dashboard(fake, payment_of(conn, order_id), 500, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", dict(dashboard))) == "ok"

    with pytest.raises(errors.DomainError, match=r"already refunded|in progress"):
        refunds.request(conn, client, order_id, BUYER, items=[items["b200"]], refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, ours)

    assert order_of(conn, order_id) == ("refunded", 1000, 0)
    assert books(conn) == {}
    assert open_kinds(conn) == []
    assert_audit_ok(conn)


# -- what audit catches -----------------------------------------------------------------------------


def refunded_order(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> uuid.UUID:
    order_id = three_items(conn, settings, fake)
    item = items_of(conn, order_id)["b200"]
    out = refunds.request(conn, client, order_id, BUYER, items=[item], refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, out)
    return order_id


def test_audit_catches_an_edited_read_model(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    refunded_order(conn, client, fake, settings)
    assert run_cli("audit", settings=settings).returncode == 0
    conn.execute("UPDATE seller_balances SET held = held + 100 WHERE seller_id = %s", [SELLER_A])

    done = run_cli("audit", settings=settings)

    assert done.returncode == 1
    assert "read_model" in done.stderr and f"seller {SELLER_A} USD" in done.stderr
    assert json.loads(done.stdout)["ok"] is False


def test_audit_catches_a_license_brought_back(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = refunded_order(conn, client, fake, settings)
    license_id = row(
        conn, "SELECT id FROM licenses WHERE order_id = %s AND revoked_at IS NOT NULL", order_id
    )["id"]
    conn.execute("UPDATE licenses SET revoked_at = NULL WHERE id = %s", [license_id])

    done = run_cli("audit", settings=settings)

    assert done.returncode == 1 and "licenses" in done.stderr and f"license {license_id}" in done.stderr


def test_audit_catches_a_posting_for_a_refund_the_psp_never_made(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    out = refunds.request(conn, client, order_id, BUYER, refund_window=REFUND_WINDOW)
    psp_settles(conn, settings, fake, out, "failed")
    refund_id = uuid.UUID(out["refund_id"])
    forged = ledger.refund_succeeded(refund_id, "USD", 1000, from_sellers={}, order_id=order_id)
    with conn.transaction():
        ledger.post(conn, forged)

    done = run_cli("audit", settings=settings)

    assert done.returncode == 1
    assert "movements" in done.stderr and f"refund:{refund_id}:succeeded" in done.stderr
    assert "never made" in done.stderr


# -- discrepancies for ops --------------------------------------------------------------------------


def test_discrepancies_are_listed_resolved_once_with_a_note_and_counted_by_status(
    conn: psycopg.Connection[Any], fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = three_items(conn, settings, fake)
    dashboard = refund_from_dashboard(fake, payment_of(conn, order_id), 250, "succeeded")
    assert process(settings, store_event(conn, "refund_succeeded", dict(dashboard))) == "ok"
    assert books(conn) == {
        "world": -750,
        "seller:A:held": 800,
        "seller:B:held": 200,
        "platform:unallocated": -250,
    }

    listed = run_cli("discrepancies", "--open", settings=settings)
    [found] = json.loads(listed.stdout)
    assert list(found) == [
        "id", "kind", "order_id", "invoice_id", "refund_id", "dispute_id", "payout_id", "amount", "currency",
        "detail", "created_at", "resolved_at", "resolved_by", "resolution",
    ]  # fmt: skip
    assert (found["kind"], found["order_id"], found["amount"]) == ("refund_unmatched", str(order_id), 250)
    status = run_cli("status", settings=settings)
    assert status.returncode == 1
    assert any(h["kind"] == "discrepancy" for h in json.loads(status.stdout)["needs_a_human"])

    assert (
        run_cli("resolve", str(found["id"]), "--by", "alice", "--note", " ", settings=settings).returncode
        == 1
    )
    done = run_cli(
        "resolve", str(found["id"]), "--by", "alice", "--note", "buyer goodwill", settings=settings
    )
    assert done.returncode == 0 and json.loads(done.stdout)["resolved_by"] == "alice"
    again = run_cli("resolve", str(found["id"]), "--by", "alice", "--note", "again", settings=settings)
    assert again.returncode == 1 and "already resolved" in again.stderr
    assert run_cli("resolve", "999999", "--by", "a", "--note", "n", settings=settings).returncode == 1
    assert json.loads(run_cli("discrepancies", "--open", settings=settings).stdout) == []
    assert len(json.loads(run_cli("discrepancies", settings=settings).stdout)) == 1
    assert_audit_ok(conn)  # resolved, the unallocated posting still has its discrepancy


def test_seller_statement_prints_balances_and_entries_newest_first(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    order_id = refunded_order(conn, client, fake, settings)

    done = run_cli("seller-statement", str(SELLER_B), "--currency", "USD", settings=settings)

    statement = json.loads(done.stdout)
    assert statement["balances"] == {"USD": {"held": 0, "available": 0, "in_transit": 0}}
    assert [(e["kind"], e["account"], e["amount"]) for e in statement["entries"]] == [
        ("refund", "held", -200),
        ("order_paid", "held", 200),
    ]
    assert all(e["order_id"] == str(order_id) for e in statement["entries"])
    assert run_cli("seller-statement", str(SELLER_B), "--currency", "usd", settings=settings).returncode == 2
