"""The ledger's rules live in Postgres: balanced, append-only, closed once committed; and the
migration posts opening balances so that `audit` passes on a database round 2 filled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import make_order, migrated_before, row, rows
from veza_worker import audit, db, ledger

LEDGER_MIGRATION = "0012_ledger.sql"


def post_raw(conn: psycopg.Connection[Any], key: str, legs: list[tuple[str, int]]) -> None:
    """A transaction and its entries written by hand, as anyone with SQL could."""
    tx = row(conn, "INSERT INTO ledger_transactions (key, kind) VALUES (%s, 'correction') RETURNING id", key)
    for account, amount in legs:
        conn.execute(
            "INSERT INTO ledger_entries (transaction_id, account, currency, amount)"
            " VALUES (%s, %s, 'EUR', %s)",
            [tx["id"], account, amount],
        )


def test_an_unbalanced_transaction_is_refused_at_commit(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="not balanced: -1 EUR off"):
        with conn.transaction():
            post_raw(conn, "k:unbalanced", [("world", -5), ("platform:revenue", 4)])
    with pytest.raises(psycopg.errors.CheckViolation, match="has no entries"):
        with conn.transaction():
            post_raw(conn, "k:empty", [])
    assert row(conn, "SELECT count(*) AS n FROM ledger_transactions")["n"] == 0


def test_the_ledger_is_append_only_and_a_committed_transaction_is_closed(
    conn: psycopg.Connection[Any],
) -> None:
    with conn.transaction():
        post_raw(conn, "k:ok", [("world", -5), ("platform:revenue", 5)])

    for statement in (
        "UPDATE ledger_entries SET amount = amount * 2",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET kind = 'x'",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_entries",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
    tx = row(conn, "SELECT id FROM ledger_transactions WHERE key = 'k:ok'")["id"]
    with pytest.raises(psycopg.errors.CheckViolation, match="is closed"), conn.transaction():
        for account, amount in (("world", -1), ("platform:revenue", 1)):  # balanced, but an edit
            conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account, currency, amount)"
                " VALUES (%s, %s, 'EUR', %s)",
                [tx, account, amount],
            )
    assert [r["amount"] for r in rows(conn, "SELECT amount FROM ledger_entries ORDER BY id")] == [-5, 5]


def test_post_writes_once_per_key_and_keeps_the_read_model(conn: psycopg.Connection[Any]) -> None:
    seller_a, seller_b, order_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    posting = ledger.order_paid(order_id, "EUR", 1500, {seller_a: 1000, seller_b: 500})
    with conn.transaction():
        assert ledger.post(conn, posting) is True
    with conn.transaction():
        assert ledger.post(conn, posting) is False  # a replay posts nothing

    balances = rows(conn, "SELECT seller_id, held, available, balance FROM seller_balances ORDER BY held")
    assert [(b["seller_id"], b["held"], b["available"], b["balance"]) for b in balances] == [
        (seller_b, 500, 0, 500),
        (seller_a, 1000, 0, 1000),
    ]
    with conn.transaction():
        assert ledger.order_held(conn, order_id) == {seller_a: 1000, seller_b: 500}
        ledger.post(conn, ledger.hold_released(order_id, "EUR", ledger.order_held(conn, order_id)))
        assert ledger.order_held(conn, order_id) == {}
    assert row(conn, "SELECT held, available FROM seller_balances WHERE seller_id = %s", seller_a) == {
        "held": 0,
        "available": 1000,
    }
    with pytest.raises(ValueError, match="unbalanced posting"):
        ledger.Posting("k", ledger.Kind.CORRECTION, "EUR", {ledger.WORLD: 1})


def call_ledger_post(
    conn: psycopg.Connection[Any], key: str, accounts: list[str], amounts: list[int]
) -> bool:
    """ledger_post called by hand, as anyone with SQL could."""
    found: bool = row(
        conn,
        "SELECT ledger_post(%s, 'correction', 'EUR', NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        " %s::text[], %s::bigint[]) AS posted",
        key,
        accounts,
        amounts,
    )["posted"]
    return found


def test_ledger_post_is_held_to_the_tables_checks_like_any_writer(conn: psycopg.Connection[Any]) -> None:
    """The function is the ledger's fast path, not a way around its rules: the tables' triggers and
    CHECKs refuse what it writes exactly as they refuse a hand-written INSERT."""
    seller = uuid.uuid4()
    with pytest.raises(psycopg.errors.CheckViolation, match="not balanced: -1 EUR off"):
        with conn.transaction():
            call_ledger_post(conn, "k:fn-unbalanced", ["world", f"seller:{seller}:held"], [-5, 4])
    with pytest.raises(psycopg.errors.CheckViolation, match="ledger_entries_account_check"):
        with conn.transaction():
            call_ledger_post(conn, "k:fn-bad-account", ["world", "seller:nobody:held"], [-5, 5])
    assert row(conn, "SELECT count(*) AS n FROM ledger_transactions")["n"] == 0
    assert row(conn, "SELECT count(*) AS n FROM seller_balances")["n"] == 0  # rolled back with it

    with conn.transaction():
        assert call_ledger_post(conn, "k:fn", ["world", f"seller:{seller}:held"], [-5, 5]) is True
    with conn.transaction():  # the same key again, even with other entries: nothing is written
        assert call_ledger_post(conn, "k:fn", ["world", f"seller:{seller}:held"], [-7, 7]) is False
    assert row(conn, "SELECT held, balance FROM seller_balances WHERE seller_id = %s", seller) == {
        "held": 5,
        "balance": 5,
    }
    assert [r["amount"] for r in rows(conn, "SELECT amount FROM ledger_entries ORDER BY id")] == [-5, 5]


# -- upgrading a database that round 2 filled ------------------------------------------------------


@pytest.fixture
def round2_url(tmp_path: Path) -> Iterator[str]:
    """A database migrated up to just before the ledger."""
    with migrated_before(LEDGER_MIGRATION, tmp_path) as url:
        yield url


def paid(conn: psycopg.Connection[Any], items: list[tuple[uuid.UUID, int]], status: str) -> uuid.UUID:
    """An order as round 2 left it once paid: completed (then moved on), licenses and transfers."""
    order_id = make_order(conn, items, status=status, payment_id=f"pay_{uuid.uuid4().hex[:26]}")
    conn.execute(
        "UPDATE orders SET completed_at = now(), refund_deadline = now() + interval '14 days' WHERE id = %s",
        [order_id],
    )
    conn.execute(
        "INSERT INTO licenses (order_id, order_item_id, buyer_id, track_id)"
        " SELECT i.order_id, i.id, o.buyer_id, i.track_id"
        " FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.id = %s",
        [order_id],
    )
    return order_id


def item_of(conn: psycopg.Connection[Any], order_id: uuid.UUID, seller_id: uuid.UUID) -> uuid.UUID:
    query = "SELECT id FROM order_items WHERE order_id = %s AND seller_id = %s"
    found: uuid.UUID = row(conn, query, order_id, seller_id)["id"]
    return found


def test_migrating_a_round2_database_posts_opening_balances_that_audit_accepts(round2_url: str) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(round2_url, autocommit=True) as conn:
        paid(conn, [(a, 1000), (b, 500)], "completed")
        partly = paid(conn, [(a, 300), (b, 200)], "completed")
        refund = uuid.uuid4()
        conn.execute(
            "INSERT INTO refunds (id, order_id, requested_by, amount, currency, status,"
            " hyperswitch_refund_id) VALUES (%s, %s, %s, 300, 'USD', 'succeeded', %s)",
            [refund, partly, uuid.uuid4(), f"ref_{refund.hex[:26]}"],
        )
        conn.execute("INSERT INTO refund_items VALUES (%s, %s)", [refund, item_of(conn, partly, a)])
        conn.execute(
            "UPDATE licenses SET revoked_at = now() WHERE order_item_id = %s", [item_of(conn, partly, a)]
        )
        lost = paid(conn, [(a, 700)], "charged_back")
        conn.execute("UPDATE licenses SET revoked_at = now() WHERE order_id = %s", [lost])
        won = paid(conn, [(b, 400)], "completed")
        for dispute_id, order_id, status, seller, amount in (
            ("dp_lost", lost, "dispute_lost", a, 700),
            ("dp_won", won, "dispute_won", b, 400),
        ):
            conn.execute(
                "INSERT INTO disputes (id, payment_id, order_id, amount, currency, stage, status, held,"
                " closed_at) SELECT %s, payment_id, id, %s, 'USD', 'dispute', %s, %s, now()"
                " FROM orders WHERE id = %s",
                [dispute_id, amount, status, status == "dispute_lost", order_id],
            )
            conn.execute(
                "INSERT INTO dispute_debits VALUES (%s, %s, 'USD', %s)", [dispute_id, seller, amount]
            )
        failed = make_order(conn, [(c, 900)], status="failed", payment_id="pay_failed_late_success_00000")
        conn.execute(
            "INSERT INTO refunds (order_id, amount, currency, status, hyperswitch_refund_id, automatic, note)"
            " VALUES (%s, 900, 'USD', 'succeeded', 'ref_automatic_000000000000000000', true, 'automatic: x')",
            [failed],
        )
        clamped = paid(conn, [(c, 100)], "completed")
        # Round-2 balances: A 1000+300-300+700-700 = 1000, B 500+200+400-400+400 = 1100, C 100 less
        # 60 paid out by hand outside veza-worker.
        conn.execute(
            "INSERT INTO seller_balances (seller_id, currency, balance)"
            " VALUES (%s, 'USD', 1000), (%s, 'USD', 1100), (%s, 'USD', 40)",
            [a, b, c],
        )

    assert db.migrate(round2_url)["applied"][0] == LEDGER_MIGRATION

    with psycopg.connect(round2_url, autocommit=True) as conn:
        result = audit.run(conn)
        assert result["violations"] == []
        assert result["ok"] is True
        balances = {
            r["seller_id"]: (r["held"], r["available"], r["balance"])
            for r in rows(conn, "SELECT seller_id, held, available, balance FROM seller_balances")
        }
        assert balances == {a: (1000, 0, 1000), b: (1100, 0, 1100), c: (100, 0, 100)}
        world = row(conn, "SELECT sum(amount) AS s FROM ledger_entries WHERE account = 'world'")["s"]
        # paid in 1500 + 500 + 700 + 400 + 100 + 900 kept; out: refund 300, chargeback 700, automatic 900
        assert world == -(1500 + 500 + 700 + 400 + 100 + 900) + 300 + 700 + 900
        assert (
            row(conn, "SELECT sum(amount) AS s FROM ledger_entries WHERE account = 'platform:suspense'")["s"]
            == 0
        )
        kinds = {
            r["key"].split(":")[0] + ":" + r["key"].split(":")[-1]
            for r in rows(conn, "SELECT key FROM ledger_transactions")
        }
        assert kinds == {"order:paid", "refund:succeeded", "refund:kept", "dispute:opened", "dispute:closed"}
        [difference] = rows(conn, "SELECT kind, subject, amount FROM discrepancies WHERE resolved_at IS NULL")
        assert difference == {"kind": "opening_balance_difference", "subject": f"seller:{c}", "amount": 60}
        assert clamped and failed
