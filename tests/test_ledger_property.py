"""The test that finds the next F1: random interleavings of payments, refunds by item, dashboard
refunds, disputes (every outcome), automatic refunds and replays against the fake PSP; after every
step the ledger is balanced, its read model equals it and `audit` finds nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.factories import BUYER, REFUND_WINDOW, SELLER_A, SELLER_B, moved
from tests.fake_hyperswitch import (
    FakeHyperswitch,
    dispute,
    refund_from_dashboard,
    settle_payment,
    settle_refund,
)
from tests.support import make_order, process, rows, store_event
from veza_worker import audit, automatic_refunds, errors, hyperswitch, refunds
from veza_worker.settings import Settings

EXAMPLES = 30
STEPS = 30
MAX_ORDERS = 3  # few orders, many moves on each: the interleavings that broke before
# Every run of this file: how many state machines and steps it tried (the closing note quotes it).
RUNS: dict[str, int] = {"examples": 0, "steps": 0}


def test_any_interleaving_keeps_the_books_balanced_and_audited(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> None:
    class Books(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            RUNS["examples"] += 1
            self.orders: list[uuid.UUID] = []
            self.payments: dict[uuid.UUID, str] = {}
            self.pending: list[dict[str, Any]] = []  # our refunds the PSP has not answered
            self.disputes: list[dict[str, Any]] = []  # open ones
            self.delivered: list[tuple[str, dict[str, Any]]] = []  # for replays
            self.automatic: list[str] = []  # automatic refunds sent, not answered: their PSP ids

        def deliver(self, event_type: str, obj: dict[str, Any]) -> None:
            self.delivered.append((event_type, dict(obj)))
            result = process(settings, store_event(conn, event_type, dict(obj)))
            assert result is not None and not result.startswith("error"), (event_type, result)

        @precondition(lambda self: len(self.orders) < MAX_ORDERS)
        @rule(amounts=st.lists(st.sampled_from([100, 250, 400]), min_size=1, max_size=3))
        def pay_an_order(self, amounts: list[int]) -> None:
            sellers = [SELLER_A, SELLER_B, SELLER_A]
            payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
            items = list(zip(sellers, amounts, strict=False))
            order_id = make_order(conn, items, buyer_id=BUYER, payment_id=payment_id)
            paid = {
                "payment_id": payment_id,
                "status": "succeeded",
                "amount": sum(amounts),
                "currency": "USD",
            }
            fake.payments[payment_id] = {**paid, "client_secret": "cs", "metadata": {}}
            settle_payment(fake, payment_id, "succeeded")
            self.deliver("payment_succeeded", fake.payments[payment_id])
            self.orders.append(order_id)
            self.payments[order_id] = payment_id

        @rule()
        def late_success_for_a_failed_order(self) -> None:
            payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
            make_order(conn, [(SELLER_B, 300)], status="failed", payment_id=payment_id)
            paid = {"payment_id": payment_id, "status": "succeeded", "amount": 300, "currency": "USD"}
            fake.payments[payment_id] = {**paid, "client_secret": "cs", "metadata": {}}
            settle_payment(fake, payment_id, "succeeded")
            self.deliver("payment_succeeded", fake.payments[payment_id])
            automatic_refunds.send_unsent(conn, client)
            query = (
                "SELECT r.hyperswitch_refund_id FROM refunds r JOIN orders o ON o.id = r.order_id"
                " WHERE o.payment_id = %s"
            )
            self.automatic += [r["hyperswitch_refund_id"] for r in rows(conn, query, payment_id)]

        @precondition(lambda self: self.automatic)
        @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "failed"]))
        def the_psp_answers_an_automatic_refund(self, data: st.DataObject, outcome: str) -> None:
            psp_id = data.draw(st.sampled_from(self.automatic), label="automatic refund")
            self.automatic.remove(psp_id)
            refund = settle_refund(fake, psp_id, outcome, None if outcome == "succeeded" else "x")
            self.deliver(f"refund_{outcome}", refund)

        @precondition(lambda self: self.orders)
        @rule(data=st.data())
        def refund_some_items(self, data: st.DataObject) -> None:
            order_id = data.draw(st.sampled_from(self.orders), label="order")
            found = rows(conn, "SELECT id FROM order_items WHERE order_id = %s ORDER BY id", order_id)
            chosen = data.draw(st.sets(st.sampled_from([r["id"] for r in found]), min_size=1), label="items")
            try:
                out = refunds.request(
                    conn, client, order_id, BUYER, items=sorted(chosen), refund_window=REFUND_WINDOW
                )
            except errors.DomainError:
                return  # refused (in flight, disputed, already refunded…): nothing written
            if out["status"] == "pending":
                self.pending.append(out)

        @precondition(lambda self: self.pending)
        @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "failed"]))
        def the_psp_answers_a_refund(self, data: st.DataObject, outcome: str) -> None:
            out = data.draw(st.sampled_from(self.pending), label="refund")
            self.pending.remove(out)
            refund = settle_refund(
                fake, out["hyperswitch_refund_id"], outcome, None if outcome == "succeeded" else "x"
            )
            self.deliver(f"refund_{outcome}", refund)

        @precondition(lambda self: self.orders)
        @rule(data=st.data(), whole=st.booleans())
        def staff_refund_in_the_dashboard(self, data: st.DataObject, whole: bool) -> None:
            order_id = data.draw(st.sampled_from(self.orders), label="order")
            left = rows(
                conn,
                "SELECT coalesce(sum(i.amount), 0) AS left FROM order_items i WHERE i.order_id = %s"
                " AND NOT EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id"
                " WHERE ri.order_item_id = i.id AND r.status IN ('succeeded', 'pending'))",
                order_id,
            )[0]["left"]
            amount = int(left) if whole and left else 150
            refund = refund_from_dashboard(fake, self.payments[order_id], amount, "succeeded")
            self.deliver("refund_succeeded", refund)

        @precondition(lambda self: self.orders)
        @rule(data=st.data())
        def a_dispute_opens(self, data: st.DataObject) -> None:
            order_id = data.draw(st.sampled_from(self.orders), label="order")
            opened = dispute(fake, self.payments[order_id], "dispute_opened")
            self.deliver("dispute_opened", opened)
            self.disputes.append(opened)

        @precondition(lambda self: self.disputes)
        @rule(
            data=st.data(),
            outcome=st.sampled_from(["dispute_challenged", "dispute_won", "dispute_cancelled", "dispute_lost",
                                     "dispute_accepted", "dispute_expired"]),
        )  # fmt: skip
        def a_dispute_moves(self, data: st.DataObject, outcome: str) -> None:
            opened = data.draw(st.sampled_from(self.disputes), label="dispute")
            if outcome != "dispute_challenged":
                self.disputes.remove(opened)
            self.deliver(outcome, moved(fake, opened, outcome))

        @precondition(lambda self: self.delivered)
        @rule(data=st.data())
        def a_delivery_is_replayed(self, data: st.DataObject) -> None:
            event_type, obj = data.draw(st.sampled_from(self.delivered), label="delivery")
            result = process(settings, store_event(conn, event_type, obj))
            assert result is not None and (result == "ok" or result.startswith("skipped")), result

        @invariant()
        def the_books_hold(self) -> None:
            RUNS["steps"] += 1
            with psycopg.connect(conn.info.dsn) as own:
                found = audit.run(own)
            assert found["violations"] == [], found["violations"]

    run_state_machine_as_test(
        Books,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    print(f"\nledger property test: {RUNS['examples']} state machines, {RUNS['steps']} audited steps")
