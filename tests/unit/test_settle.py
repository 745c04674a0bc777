"""settle's decisions, without services: what a PSP object asks of us given what we hold, and the
window read from --since/--until."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from veza_worker import errors, hyperswitch, settle
from veza_worker.discrepancies import Kind
from veza_worker.settle import Apply, Open, OurPayment, OurRefund

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
OURS = hyperswitch.merchant_id("pay", uuid.uuid4())


def payment(status: str, amount: int = 1000, currency: str = "USD", **fields: Any) -> dict[str, Any]:
    return {"payment_id": OURS, "status": status, "amount": amount, "currency": currency, **fields}


def order(status: str | None, *, refunded_automatically: bool = False) -> OurPayment:
    held = status is not None
    return OurPayment(
        payment_id=OURS,
        order_id=uuid.uuid4() if held else None,
        invoice_id=None,
        status=status,
        amount=1000 if held else None,
        currency="USD" if held else None,
        cancelled_after_capture=False,
        refunded_automatically=refunded_automatically,
    )


def invoice(status: str, cancelled_after_capture: bool = False) -> OurPayment:
    return OurPayment(OURS, None, uuid.uuid4(), status, 1000, "USD", cancelled_after_capture, False)


@pytest.mark.parametrize(
    ("psp_status", "ours", "expected"),
    [
        ("succeeded", order("pending"), Apply("payment_succeeded")),
        ("succeeded", order("failed"), Apply("payment_succeeded")),
        ("succeeded", order("failed", refunded_automatically=True), None),
        ("succeeded", order("completed"), None),
        ("partially_captured", order("pending"), Apply("payment_succeeded")),
        ("failed", order("pending"), Apply("payment_failed")),
        ("expired", order("pending"), Apply("payment_cancelled")),
        ("failed", order("failed"), None),
        ("processing", order("pending"), None),
        ("cancelled_post_capture", order("completed"), Apply("payment_cancelled_post_capture")),
        ("cancelled_post_capture", order("disputed"), Apply("payment_cancelled_post_capture")),
        ("cancelled_post_capture", order("refunded"), None),
        ("cancelled_post_capture", order("pending"), Apply("payment_cancelled")),
        ("cancelled_post_capture", invoice("paid"), Apply("payment_cancelled_post_capture")),
        ("cancelled_post_capture", invoice("paid", cancelled_after_capture=True), None),
    ],
)
def test_what_our_handlers_can_apply_is_applied(psp_status: str, ours: OurPayment, expected: Any) -> None:
    assert settle.payment_finding(payment(psp_status), ours) == expected


def test_what_no_handler_can_apply_opens_a_discrepancy() -> None:
    assert isinstance(found := settle.payment_finding(payment("succeeded", 999), order("completed")), Open)
    assert found.kind == Kind.PAYMENT_AMOUNT_MISMATCH
    assert settle.payment_finding(payment("succeeded", currency="EUR"), order("pending")) == Open(
        Kind.PAYMENT_AMOUNT_MISMATCH,
        f"payment {OURS}: the payment provider holds 1000 EUR, we hold 1000 USD",
    )
    assert isinstance(found := settle.payment_finding(payment("failed"), order("completed")), Open)
    assert found.kind == Kind.PAYMENT_NOT_PAID_AT_PSP
    assert isinstance(found := settle.payment_finding(payment("succeeded"), order(None)), Open)
    assert (found.kind, found.subject) == (Kind.PAYMENT_UNKNOWN, OURS) and OURS in found.detail


def test_a_payment_of_another_integration_is_none_of_our_business() -> None:
    theirs = OurPayment("pay_Xy12abcDEF34ghij", None, None, None, None, None, False, False)
    assert settle.payment_finding(payment("succeeded", payment_id=theirs.payment_id), theirs) is None


def refund(status: str | None, amount: int = 500, *, held: bool = True, automatic: bool = False) -> OurRefund:
    return OurRefund(
        psp_refund_id="ref_psp",
        refund_id=uuid.uuid4() if status else None,
        status=status,
        amount=amount if status else None,
        currency="USD" if status else None,
        order_id=uuid.uuid4() if held else None,
        invoice_id=None,
        automatic=automatic,
    )


def psp_refund(status: str, amount: int = 500, payment_id: str = OURS) -> dict[str, Any]:
    return {
        "refund_id": "ref_psp",
        "payment_id": payment_id,
        "status": status,
        "amount": amount,
        "currency": "USD",
    }


@pytest.mark.parametrize(
    ("psp", "ours", "expected"),
    [
        (psp_refund("succeeded"), refund(None), Apply("refund_succeeded")),  # made at the PSP: adopted
        (psp_refund("failed"), refund(None), Apply("refund_failed")),
        (psp_refund("pending"), refund(None), None),  # adopted once final
        (psp_refund("succeeded"), refund("pending"), Apply("refund_succeeded")),
        (psp_refund("failed"), refund("pending"), Apply("refund_failed")),
        (psp_refund("succeeded", 400), refund("pending"), Apply("refund_succeeded")),  # its handler opens
        (psp_refund("succeeded"), refund("failed"), Apply("refund_succeeded")),
        # an automatic one's money sits in suspense and a retry may have given it back too: a person
        (
            psp_refund("succeeded"),
            refund("failed", automatic=True),
            Open(Kind.REFUND_SUCCEEDED_AFTER_FAILED, ""),
        ),
        (psp_refund("succeeded"), refund("succeeded"), None),
        (psp_refund("failed"), refund("failed"), None),
        (psp_refund("succeeded"), refund(None, held=False), Open(Kind.PAYMENT_UNKNOWN, "", OURS)),
        (psp_refund("succeeded", payment_id="pay_theirs"), refund(None, held=False), None),
    ],
)
def test_each_refund_is_applied_opened_or_left(psp: dict[str, Any], ours: OurRefund, expected: Any) -> None:
    found = settle.refund_finding(psp, ours)
    if isinstance(expected, Open):
        assert isinstance(found, Open) and (found.kind, found.subject) == (expected.kind, expected.subject)
    else:
        assert found == expected


def test_a_refund_we_hold_succeeded_that_the_psp_failed_or_changed_opens_a_discrepancy() -> None:
    failed = settle.refund_finding(psp_refund("failed"), refund("succeeded"))
    other = settle.refund_finding(psp_refund("succeeded", 450), refund("succeeded"))
    assert isinstance(failed, Open) and failed.kind == Kind.REFUND_FAILED_AFTER_SUCCEEDED
    assert isinstance(other, Open) and other.kind == Kind.REFUND_AMOUNT_MISMATCH


def test_the_window_defaults_to_the_last_three_days() -> None:
    assert settle.window(None, None, NOW) == (NOW - timedelta(days=3), NOW)
    until = datetime(2026, 12, 1, tzinfo=UTC)
    assert settle.window(None, "2026-12-01", NOW) == (until - timedelta(days=3), until)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("2026-12-05T10:00:00Z", datetime(2026, 12, 5, 10, tzinfo=UTC)),
        ("2026-12-05T11:00:00+01:00", datetime(2026, 12, 5, 10, tzinfo=UTC)),
        ("2026-12-05T10:00:00", datetime(2026, 12, 5, 10, tzinfo=UTC)),  # naive: UTC
        ("2026-12-05", datetime(2026, 12, 5, tzinfo=UTC)),
    ],
)
def test_since_and_until_are_iso_8601(since: str, expected: datetime) -> None:
    assert settle.window(since, None, NOW)[0] == expected


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", None, "--since: not an ISO 8601 time: 'yesterday'"),
        (None, "2026-13-01", "--until: not an ISO 8601 time: '2026-13-01'"),
        ("2026-12-02", "2026-12-01", "--since 2026-12-02T00:00:00+00:00 is after --until"),
    ],
)
def test_a_bad_window_is_refused(since: str | None, until: str | None, message: str) -> None:
    with pytest.raises(errors.DomainError, match=message.replace("+", r"\+")):
        settle.window(since, until, NOW)
