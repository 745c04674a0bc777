"""Each state machine's StrEnum of statuses is exactly what its table's CHECK constraint allows."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import psycopg
import pytest

from veza_worker import orders, refunds
from veza_worker.subscriptions import invoices, model

CHECKED: dict[str, type[StrEnum]] = {
    "orders_status_check": orders.Status,
    "seller_transfers_status_check": orders.TransferStatus,
    "refunds_status_check": refunds.Status,
    "user_subscriptions_status_check": model.Status,
    "subscription_invoices_status_check": invoices.Status,
    "subscription_invoices_kind_check": invoices.Kind,
}


@pytest.mark.parametrize("constraint", sorted(CHECKED))
def test_an_enum_names_every_status_its_table_allows_and_no_other(
    conn: psycopg.Connection[Any], constraint: str
) -> None:
    found = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", [constraint]
    ).fetchone()
    assert found is not None, f"no constraint {constraint}"

    assert set(re.findall(r"'(\w+)'::text", found[0])) == {str(s) for s in CHECKED[constraint]}


def test_a_status_is_sent_to_postgres_as_its_text(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("SELECT %s::text", [model.Status.PENDING_PAYMENT]).fetchone() == ("pending_payment",)
