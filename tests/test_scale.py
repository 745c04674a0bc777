"""Every sweep finds its rows through an index: on 200,000 rows with 10 stuck, no sequential scan.

A tick must cost what the stuck rows cost, not what the tables hold. EXPLAIN only plans; nothing
here is timed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, LiteralString

import psycopg
import pytest

from tests.support import admin, url_for
from veza_worker import reconcile, retention, webhooks
from veza_worker.subscriptions import billing

ROWS = 200_000
STUCK = 10

FILL = [
    # 200k orders, all completed but the 10 oldest, which are pending with a payment
    """INSERT INTO orders (buyer_id, status, total_amount, currency, payment_id, created_at)
       SELECT gen_random_uuid(), CASE WHEN n <= %(stuck)s THEN 'pending' ELSE 'completed' END, 100, 'USD',
              'pay_' || lpad(n::text, 26, '0'), now() - make_interval(mins => 60 + %(rows)s - n)
         FROM generate_series(1, %(rows)s) AS n""",
    # one refund per order: 10 submitted and stuck, 10 orphans, the rest succeeded
    """INSERT INTO refunds (order_id, requested_by, amount, currency, status, hyperswitch_refund_id,
                            created_at, submitted_at)
       SELECT id, buyer_id, 100, 'USD',
              CASE WHEN rn <= 2 * %(stuck)s THEN 'pending' ELSE 'succeeded' END,
              'ref_' || lpad(rn::text, 26, '0'), created_at,
              CASE WHEN rn <= %(stuck)s THEN created_at END
         FROM (SELECT id, buyer_id, created_at, row_number() OVER (ORDER BY created_at DESC) AS rn
                 FROM orders) AS o""",
    "INSERT INTO subscription_plans (id, name, amount, currency, interval, trial_days)"
    " VALUES ('00000000-0000-4000-8000-000000000001', 'Pro', 999, 'EUR', 'month', 7)",
    # 200k subscriptions: 10 pending_payment (with an invoice), 10 ended trials, 10 due for renewal,
    # 10 past_due; of the rest, half active inside their period, half expired
    """INSERT INTO user_subscriptions (user_id, plan_id, status, trial_ends_at, updated_at,
                                       current_period_end, past_due_since)
       SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001',
              CASE WHEN n <= %(stuck)s THEN 'pending_payment'
                   WHEN n <= 2 * %(stuck)s THEN 'trialing'
                   WHEN n <= 3 * %(stuck)s THEN 'active'
                   WHEN n <= 4 * %(stuck)s THEN 'past_due'
                   WHEN n %% 2 = 0 THEN 'active' ELSE 'expired' END,
              now() - interval '1 day', now() - interval '2 hours',
              CASE WHEN n <= 4 * %(stuck)s THEN now() - interval '1 hour'
                   ELSE now() + make_interval(mins => n) END,
              CASE WHEN n <= 4 * %(stuck)s THEN now() - interval '1 hour' END
         FROM generate_series(1, %(rows)s) AS n""",
    # one paid invoice per subscription; the pending_payment ones have a pending one too
    """INSERT INTO subscription_invoices (subscription_id, amount, currency, payment_id, status, created_at,
                                          submitted_at)
       SELECT id, 999, 'EUR', 'pay_s' || lpad(row_number() OVER ()::text, 25, '0'), 'paid',
              now() - interval '40 days', now() - interval '40 days'
         FROM user_subscriptions""",
    """INSERT INTO subscription_invoices (subscription_id, amount, currency, payment_id, created_at)
       SELECT id, 999, 'EUR', 'pay_p' || lpad(row_number() OVER ()::text, 25, '0'), now() - interval '2 hours'
         FROM user_subscriptions WHERE status = 'pending_payment'""",
    # 200k audit rows: 10 still queued, the rest processed
    """INSERT INTO hyperswitch_webhook_log (payload, signature_valid, processing_result, received_at)
       SELECT '{}', true, CASE WHEN n <= %(stuck)s THEN 'queued' ELSE 'ok' END,
              now() - make_interval(mins => n)
         FROM generate_series(1, %(rows)s) AS n""",
]


@pytest.fixture(scope="module")
def big(template_db: str) -> Iterator[psycopg.Connection[Any]]:
    name = f"veza_scale_{uuid.uuid4().hex[:12]}"
    admin("CREATE DATABASE {} TEMPLATE {}", name, template_db)
    with psycopg.connect(url_for(name), autocommit=True) as conn:
        for statement in FILL:
            conn.execute(statement, {"rows": ROWS, "stuck": STUCK})
        conn.execute("ANALYZE")
        yield conn
    admin("DROP DATABASE {} WITH (FORCE)", name)


def plan_nodes(
    conn: psycopg.Connection[Any], query: LiteralString, params: dict[str, Any]
) -> list[dict[str, Any]]:
    [(document,)] = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchall()
    plan = document[0]["Plan"] if isinstance(document, list) else json.loads(document)[0]["Plan"]
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


DUE = datetime.now().astimezone() - timedelta(minutes=1)


def claim_params(stuck_after: timedelta) -> dict[str, Any]:
    """A reconciler claim's parameters: stuck for `stuck_after`, due, nothing tried yet."""
    return {"stuck_after": stuck_after, "due_before": DUE, "tried": []}


@pytest.mark.parametrize(
    ("query", "params", "table", "index"),
    [
        (reconcile.QUERIES["claim_order"], claim_params(timedelta(minutes=30)), "orders", "orders_stuck_idx"),
        (
            reconcile.QUERIES["claim_refund"],
            claim_params(timedelta(minutes=30)),
            "refunds",
            "refunds_stuck_idx",
        ),
        (
            reconcile.QUERIES["claim_orphan_refund"],
            claim_params(timedelta(minutes=5)),
            "refunds",
            "refunds_orphan_idx",
        ),
        (
            reconcile.QUERIES["claim_invoice"],
            claim_params(timedelta(minutes=30)),
            "subscription_invoices",
            "subscription_invoices_pending_idx",
        ),
        (
            billing.QUERIES["claim_ended_trials"],
            {"limit": 50},
            "user_subscriptions",
            "user_subscriptions_trial_idx",
        ),
        (
            billing.QUERIES["end_canceled"],
            {"limit": 50},
            "user_subscriptions",
            "user_subscriptions_renewal_idx",
        ),
        (
            billing.QUERIES["claim_due_renewals"],
            {"limit": 50},
            "user_subscriptions",
            "user_subscriptions_renewal_idx",
        ),
        (
            billing.QUERIES["claim_dunning"],
            {"limit": 50, "delays": [timedelta(days=1), timedelta(days=3)]},
            "user_subscriptions",
            "user_subscriptions_past_due_idx",
        ),
        (
            billing.QUERIES["unsent_invoices"],
            {"older_than": timedelta(minutes=2), "limit": 50},
            "subscription_invoices",
            "subscription_invoices_pending_idx",
        ),
        (
            webhooks.QUERIES["claim_stuck"],
            {"older_than": timedelta(minutes=2), "limit": 1000},
            "hyperswitch_webhook_log",
            "webhook_log_queued_idx",
        ),
        (
            retention.QUERIES["delete_expired"],
            {"older_than": timedelta(days=90), "limit": 10_000},
            "hyperswitch_webhook_log",
            "webhook_log_expirable_idx",
        ),
    ],
    ids=[
        "orders",
        "refunds",
        "orphan-refunds",
        "invoices",
        "trial-end",
        "canceled-at-period-end",
        "renewals",
        "dunning",
        "unsent-invoices",
        "redrive",
        "retention",
    ],
)
def test_each_sweep_reads_its_table_through_its_index(
    big: psycopg.Connection[Any], query: LiteralString, params: dict[str, Any], table: str, index: str
) -> None:
    nodes = plan_nodes(big, query, params)

    on_table = [n for n in nodes if n.get("Relation Name") == table]
    assert on_table, nodes
    assert all(n["Node Type"] != "Seq Scan" for n in on_table), [n["Node Type"] for n in on_table]
    assert index in {n.get("Index Name") for n in nodes}, [
        (n["Node Type"], n.get("Index Name")) for n in nodes
    ]
