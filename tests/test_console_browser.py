"""The ops console in a real browser: Playwright for Python driving Debian's Chromium.

Nothing is downloaded at run time: the browser is /usr/bin/chromium (`apt-get install chromium`;
`make test` and .ci/run install it). With CONSOLE_SCREENSHOTS=docs/console the tests save the
screenshots docs/console.md shows; otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from receiver.app import create_app
from tests.factories import SELLER_A, paid_refunded_disputed, sent_payout
from tests.fake_hyperswitch import FakeHyperswitch
from tests.support import (
    OPS_PASSWORD,
    OPS_USER,
    ServerThread,
    envelope,
    make_order,
    ops_settings,
    row,
    rows,
    store,
)
from veza_worker import discrepancies, hyperswitch, sweeps
from veza_worker.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium; make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def console(settings: Settings) -> Iterator[str]:
    """The console's base URL on the web process's real uvicorn."""
    with ServerThread(create_app(ops_settings(settings))) as server:
        yield f"{server.url}/ops"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("CONSOLE_SCREENSHOTS", str(tmp_path)))


def log_in(page: Page, console: str) -> None:
    page.goto(f"{console}/")
    expect(page).to_have_url(f"{console}/login")  # no session: the login form
    page.get_by_label("Username").fill(OPS_USER)
    page.get_by_label("Password").fill(OPS_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def plant_inbox(conn: psycopg.Connection[Any]) -> int:
    """What a morning's inbox may hold: a discrepancy, a delivery in error, a late sweep's runs."""
    order_id = make_order(
        conn, [(uuid.uuid4(), 1250)], status="completed", payment_id=f"pay_{uuid.uuid4().hex}"
    )
    discrepancies.open_one(
        conn,
        discrepancies.Kind.REFUND_UNMATCHED,
        "refund ref_7Hq2 made at the PSP for 12.50 USD matches no items left",
        order_id=order_id,
        amount=1250,
        currency="USD",
    )
    log_id = store(conn, envelope("payment_succeeded", payment_id="pay_unknown_to_us"))
    conn.execute(
        "UPDATE hyperswitch_webhook_log SET processing_result = 'error: invalid amount_received',"
        " event_type = 'payment_succeeded', received_at = now() - interval '2 hours' WHERE id = %s",
        [log_id],
    )
    for sweep in sweeps.SWEEPS:  # each ran just now; the audit found nothing
        counts = '{"ok": true, "violations": []}' if sweep.name == "audit" else "{}"
        conn.execute(
            "INSERT INTO sweep_runs (name, finished_at, counts) VALUES (%s, now(), %s)", [sweep.name, counts]
        )
    return int(row(conn, "SELECT id FROM discrepancies WHERE order_id = %s", order_id)["id"])


def test_log_in_see_the_planted_discrepancy_and_resolve_it_with_a_note(
    page: Page, console: str, conn: psycopg.Connection[Any], shots: Path
) -> None:
    discrepancy_id = plant_inbox(conn)
    log_in(page, console)
    expect(page.get_by_text("Needs a human")).to_be_visible()
    page.screenshot(path=shots / "overview.png", full_page=True)

    page.get_by_role("link", name="Inbox", exact=True).click()
    planted = page.locator(f"#discrepancy-{discrepancy_id}")
    expect(planted).to_contain_text("matches no items left")
    expect(page.locator("tr", has_text="invalid amount_received")).to_be_visible()
    page.screenshot(path=shots / "inbox.png", full_page=True)

    planted.get_by_label("note").fill("refunded twice at the PSP; the buyer keeps the second, written off")
    planted.get_by_role("button", name="Resolve").click()

    expect(page).to_have_url(f"{console}/inbox")
    expect(page.locator(f"#discrepancy-{discrepancy_id}")).to_have_count(0)
    assert (
        row(conn, "SELECT resolved_by FROM discrepancies WHERE id = %s", discrepancy_id)["resolved_by"]
        == OPS_USER
    )
    assert rows(conn, "SELECT username, action, object_kind, object_id, note FROM ops_actions") == [
        {
            "username": OPS_USER,
            "action": "resolve",
            "object_kind": "discrepancy",
            "object_id": str(discrepancy_id),
            "note": "refunded twice at the PSP; the buyer keeps the second, written off",
        }
    ]


def test_an_empty_note_is_not_sent(page: Page, console: str, conn: psycopg.Connection[Any]) -> None:
    discrepancy_id = plant_inbox(conn)
    log_in(page, console)
    page.goto(f"{console}/inbox?kind=discrepancy")
    page.locator(f"#discrepancy-{discrepancy_id}").get_by_role("button", name="Resolve").click()
    expect(page.locator(f"#discrepancy-{discrepancy_id}")).to_be_visible()  # the browser kept the form
    assert rows(conn, "SELECT * FROM ops_actions") == []


def test_an_order_page_shows_its_payment_partial_refund_and_dispute_in_order(
    page: Page,
    console: str,
    conn: psycopg.Connection[Any],
    settings: Settings,
    fake: FakeHyperswitch,
    client: hyperswitch.Client,
    shots: Path,
) -> None:
    ids = paid_refunded_disputed(conn, settings, fake, client)  # each step applied by its handler
    log_in(page, console)

    page.get_by_role("searchbox", name="search by id").fill(str(ids["hyperswitch_refund_id"]))
    page.keyboard.press("Enter")

    expect(page).to_have_url(f"{console}/orders/{ids['order_id']}")
    steps = page.locator("ol.timeline li strong").all_inner_texts()
    wanted = ["payment succeeded: order completed", "refund requested", "refund succeeded", "dispute opened"]
    found = [next(i for i, text in enumerate(steps) if text == step) for step in wanted]
    assert found == sorted(found), steps
    expect(page.locator(f"#refund-{ids['refund_id']}")).to_contain_text("2.00 USD")
    expect(page.locator(f"[id='dispute-{ids['dispute_id']}']")).to_contain_text("8.00 USD")
    page.screenshot(path=shots / "order.png", full_page=True)

    page.get_by_role("link", name=str(ids["seller_a"])).first.click()
    expect(page).to_have_url(f"{console}/sellers/{ids['seller_a']}")
    expect(page.get_by_role("heading", name="Balances")).to_be_visible()


@pytest.fixture
def payout(
    conn: psycopg.Connection[Any], settings: Settings, client: hyperswitch.Client, fake: FakeHyperswitch
) -> dict[str, Any]:
    """Seller A's payout, made by the pay-sellers sweep and sent to the PSP."""
    return sent_payout(conn, settings, client, fake)


def test_the_search_box_finds_a_payout_by_its_psp_id_and_its_seller_can_be_held(
    page: Page, console: str, conn: psycopg.Connection[Any], payout: dict[str, Any], shots: Path
) -> None:
    log_in(page, console)

    page.get_by_role("searchbox", name="search by id").fill(payout["hyperswitch_payout_id"])
    page.keyboard.press("Enter")

    expect(page).to_have_url(f"{console}/payouts/{payout['id']}")
    expect(page.locator("h1")).to_contain_text(f"Payout {payout['id']}")
    expect(page.locator("dl.facts")).to_contain_text("8.00 USD")
    page.get_by_role("link", name=str(SELLER_A)).first.click()
    expect(page).to_have_url(f"{console}/sellers/{SELLER_A}")
    expect(page.get_by_role("link", name=str(payout["id"])).first).to_be_visible()

    page.get_by_label("note").fill("chargebacks under review")
    page.get_by_role("button", name="Hold payouts").click()

    expect(page).to_have_url(f"{console}/sellers/{SELLER_A}")
    expect(page.locator("dl.facts")).to_contain_text("held since")
    expect(page.get_by_role("button", name="Release payouts")).to_be_visible()
    page.screenshot(path=shots / "seller.png", full_page=True)
    assert row(conn, "SELECT action, note FROM ops_actions") == {
        "action": "hold",
        "note": "chargebacks under review",
    }
