"""The ops console over HTTP, on the web process's real uvicorn: who gets in, what a page shows
(escaped, without secrets), and that each action calls its CLI's function and leaves a noted row."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import argon2
import dramatiq
import httpx
import psycopg
import pytest

from console import auth
from receiver.app import create_app
from tests.factories import (
    SELLER_A,
    assert_audit_ok,
    failed_automatic_refund,
    make_plan,
    paid_refunded_disputed,
    paid_up,
    sent_payout,
)
from tests.fake_hyperswitch import FakeHyperswitch, settle_payout, webhook_body
from tests.support import (
    OPS_OTHER_PASSWORD,
    OPS_OTHER_USER,
    OPS_PASSWORD,
    OPS_SECRET_KEY,
    OPS_USER,
    PSP_API_KEY,
    ServerThread,
    csrf_token_in,
    envelope,
    make_order,
    ops_settings,
    post_webhook,
    process,
    row,
    rows,
    store,
)
from veza_worker import discrepancies, errors, hyperswitch, payouts, sweeps
from veza_worker.settings import Settings
from veza_worker.subscriptions import plan_changes


class Ops:
    """A person's browser, as far as the console can tell: its cookie (sent by hand, since httpx
    keeps a `Secure` cookie for https only), its address, and the pages' CSRF tokens."""

    def __init__(self, base_url: str, address: str = "203.0.113.7") -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, headers={"x-forwarded-for": address})
        self.cookie: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"cookie": f"veza_ops={self.cookie}"} if self.cookie else {}
        response = self.http.request(method, path, headers=headers, **kwargs)
        for header in response.headers.get_list("set-cookie"):
            value = header.split(";", 1)[0].removeprefix("veza_ops=")
            self.cookie = None if value == "null" else value
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        return self.request("POST", path, data=data)

    def csrf(self, path: str = "/ops/login") -> str:
        return csrf_token_in(self.get(path).text)

    def login(self, user: str = OPS_USER, password: str = OPS_PASSWORD) -> httpx.Response:
        return self.post("/ops/login", {"username": user, "password": password, "csrf_token": self.csrf()})

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def fast_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FAILURE_DELAY_SECONDS", 0.01)


@pytest.fixture
def web(settings: Settings) -> Iterator[str]:
    """The web process with the console on (OPS_USERS set), on a real uvicorn."""
    with ServerThread(create_app(ops_settings(settings))) as server:
        yield server.url


@pytest.fixture
def ops(web: str) -> Iterator[Ops]:
    person = Ops(web)
    assert person.login().status_code == 303
    yield person
    person.close()


@pytest.fixture
def stranger(web: str) -> Iterator[Ops]:
    person = Ops(web)
    yield person
    person.close()


@pytest.fixture
def story(
    conn: psycopg.Connection[Any], settings: Settings, fake: FakeHyperswitch, client: hyperswitch.Client
) -> dict[str, Any]:
    """An order paid, seller B's item refunded, seller A's disputed: each step applied by its handler."""
    return paid_refunded_disputed(conn, settings, fake, client)


def open_discrepancy(conn: psycopg.Connection[Any], detail: str = "a refund matches no items") -> int:
    order_id = make_order(
        conn, [(uuid.uuid4(), 500)], status="completed", payment_id=f"pay_{uuid.uuid4().hex}"
    )
    assert discrepancies.open_one(
        conn, discrepancies.Kind.REFUND_UNMATCHED, detail, order_id=order_id, amount=500, currency="USD"
    )
    return int(row(conn, "SELECT id FROM discrepancies WHERE order_id = %s", order_id)["id"])


def the_action(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The one ops_actions row."""
    return row(conn, "SELECT username, action, object_kind, object_id, note FROM ops_actions")


def noted(action: str, object_kind: str, object_id: Any, note: str) -> dict[str, Any]:
    """An ops_actions row of the logged-in user."""
    return {
        "username": OPS_USER,
        "action": action,
        "object_kind": object_kind,
        "object_id": str(object_id),
        "note": note,
    }


# -- who gets in --------------------------------------------------------------------------------------


def test_without_ops_users_there_is_no_console(receiver: str) -> None:
    for path in ("/ops", "/ops/", "/ops/login", "/ops/inbox"):
        assert httpx.get(f"{receiver}{path}").status_code == 404
    assert httpx.post(f"{receiver}/ops/login", data={"username": "a", "password": "b"}).status_code == 404


def test_the_webhook_route_answers_as_before_with_the_console_on(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    response = post_webhook(web, envelope())
    assert response.status_code == 200
    assert "set-cookie" not in response.headers and "content-security-policy" not in response.headers
    assert row(conn, "SELECT count(*) AS n FROM hyperswitch_webhook_log")["n"] == 1


PAGES = [
    "/ops/",
    "/ops/inbox",
    "/ops/inbox?kind=delivery",
    f"/ops/orders/{uuid.uuid4()}",
    f"/ops/subscriptions/{uuid.uuid4()}",
    f"/ops/sellers/{uuid.uuid4()}",
    f"/ops/users/{uuid.uuid4()}",
    "/ops/disputes",
    "/ops/payouts",
    "/ops/payouts?status=failed",
    f"/ops/payouts/{uuid.uuid4()}",
    "/ops/deliveries/1",
    "/ops/search?q=pay_x",
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_without_a_session_redirects_to_the_login_form(stranger: Ops, path: str) -> None:
    response = stranger.get(path)
    assert response.status_code == 303
    assert response.headers["location"].endswith("/ops/login")


def test_a_forged_or_expired_cookie_is_no_session(stranger: Ops) -> None:
    stranger.cookie = "eyJ1c2VyIjogImFsaWNlIn0=.forged.signature"
    assert stranger.get("/ops/inbox").status_code == 303


def test_login_sets_a_signed_strict_secure_httponly_cookie_and_logout_clears_it(stranger: Ops) -> None:
    response = stranger.login()
    assert response.status_code == 303 and response.headers["location"].endswith("/ops/")
    cookie = response.headers["set-cookie"].lower()
    for flag in ("httponly", "samesite=strict", "secure", "path=/ops"):
        assert flag in cookie
    assert stranger.get("/ops/inbox").status_code == 200

    assert stranger.post("/ops/logout", {"csrf_token": stranger.csrf("/ops/")}).status_code == 303
    assert stranger.get("/ops/inbox").status_code == 303


def test_a_user_removed_from_ops_users_is_logged_out(settings: Settings, stranger: Ops) -> None:
    assert stranger.login().status_code == 303
    cookie = stranger.cookie
    on = ops_settings(settings)
    without_alice = dataclasses.replace(on, ops_users=tuple((n, h) for n, h in on.ops_users if n != OPS_USER))
    with ServerThread(create_app(without_alice)) as server:
        other = Ops(server.url)
        other.cookie = cookie  # the same signed cookie: the key has not changed, the user list has
        assert other.get("/ops/").status_code == 303
        other.close()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/ops/discrepancies/{id}/resolve", {"note": "checked with the PSP"}),
        ("/ops/deliveries/1/replay", {"note": "apply it again"}),
        (f"/ops/sellers/{uuid.uuid4()}/hold", {"note": "under review"}),
        (f"/ops/sellers/{uuid.uuid4()}/release", {"note": "review done"}),
        (f"/ops/refunds/{uuid.uuid4()}/retry", {"note": "card replaced"}),
        ("/ops/logout", {}),
    ],
)
def test_a_post_without_the_csrf_token_is_refused(
    ops: Ops, conn: psycopg.Connection[Any], path: str, fields: dict[str, str]
) -> None:
    discrepancy_id = open_discrepancy(conn)
    path = path.format(id=discrepancy_id)

    assert ops.post(path, fields).status_code == 403
    assert ops.post(path, {**fields, "csrf_token": "not-the-token"}).status_code == 403
    assert (
        row(conn, "SELECT resolved_at FROM discrepancies WHERE id = %s", discrepancy_id)["resolved_at"]
        is None
    )
    assert rows(conn, "SELECT * FROM ops_actions") == []
    assert rows(conn, "SELECT * FROM seller_payout_holds") == []
    assert ops.get("/ops/inbox").status_code == 200  # still logged in


def test_a_post_without_a_session_is_refused(stranger: Ops, conn: psycopg.Connection[Any]) -> None:
    discrepancy_id = open_discrepancy(conn)
    token = stranger.csrf()  # a login form's token: a session, but nobody logged in
    for data in ({"note": "n"}, {"note": "n", "csrf_token": token}):
        assert stranger.post(f"/ops/discrepancies/{discrepancy_id}/resolve", data).status_code == 403
    assert (
        row(conn, "SELECT resolved_at FROM discrepancies WHERE id = %s", discrepancy_id)["resolved_at"]
        is None
    )


def test_the_login_form_needs_its_csrf_token(stranger: Ops) -> None:
    stranger.csrf()
    response = stranger.post("/ops/login", {"username": OPS_USER, "password": OPS_PASSWORD})
    assert response.status_code == 403
    assert stranger.get("/ops/").status_code == 303


def test_five_wrong_passwords_lock_that_user_from_that_address_only(
    web: str, settings: Settings, conn: psycopg.Connection[Any], fast_failures: None
) -> None:
    attacker, elsewhere = Ops(web, "198.51.100.1"), Ops(web, "198.51.100.2")
    for _ in range(5):
        assert attacker.login(password="guess").status_code == 401
    assert attacker.login(password="guess").status_code == 429
    assert attacker.login().status_code == 429  # the right password too, while the pair is locked
    locked = row(conn, "SELECT failures, locked_until - now() AS left FROM ops_login_failures")
    assert locked["failures"] == 5 and 14 * 60 < locked["left"].total_seconds() <= 15 * 60

    assert elsewhere.login().status_code == 303  # the same user from another address
    other_user = Ops(web, "198.51.100.1")
    assert (
        other_user.login(OPS_OTHER_USER, OPS_OTHER_PASSWORD).status_code == 303
    )  # same address, another user
    other_user.close()
    with ServerThread(create_app(ops_settings(settings))) as second:  # another web process: same count
        same_pair = Ops(second.url, "198.51.100.1")
        assert same_pair.login().status_code == 429
        same_pair.close()

    conn.execute(
        "UPDATE ops_login_failures SET locked_until = now() - interval '1 s',"
        " first_at = now() - interval '16 minutes'"
    )
    assert attacker.login().status_code == 303  # fifteen minutes later
    assert rows(conn, "SELECT * FROM ops_login_failures WHERE address = '198.51.100.1'") == []
    attacker.close()
    elsewhere.close()


def test_failures_spread_over_more_than_fifteen_minutes_do_not_lock(
    web: str, conn: psycopg.Connection[Any], fast_failures: None
) -> None:
    person = Ops(web, "198.51.100.3")
    for _ in range(4):
        assert person.login(password="guess").status_code == 401
    conn.execute("UPDATE ops_login_failures SET first_at = now() - interval '16 minutes'")
    for _ in range(4):
        assert person.login(password="guess").status_code == 401
    assert person.login().status_code == 303
    person.close()


def test_a_failed_login_is_answered_slowly(stranger: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "FAILURE_DELAY_SECONDS", 0.5)
    token = stranger.csrf()
    started = time.monotonic()
    response = stranger.post("/ops/login", {"username": "nobody", "password": "x", "csrf_token": token})
    assert response.status_code == 401 and time.monotonic() - started >= 0.5
    assert "Wrong username or password" in response.text


# -- what pages show ----------------------------------------------------------------------------------


def test_a_payload_with_a_script_is_shown_inert(ops: Ops, conn: psycopg.Connection[Any]) -> None:
    script = "<script>alert(document.cookie)</script>"
    log_id = store(conn, envelope("payment_failed", error_message=script, payment_id=f"pay_{script}"))
    conn.execute(
        "UPDATE hyperswitch_webhook_log SET processing_result = %s, event_type = %s WHERE id = %s",
        [f"error: {script}", f"payment_failed{script}", log_id],
    )
    discrepancies.open_one(conn, discrepancies.Kind.REFUND_UNMATCHED, f"detail {script}", subject=script)

    for path in ("/ops/inbox", f"/ops/deliveries/{log_id}", f"/ops/search?q={script}"):
        page = ops.get(path)
        assert page.status_code in (200, 404)
        assert "<script" not in page.text.lower()
        assert "&lt;script&gt;" in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # no script may run at all
        assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_the_console_shows_no_secret(ops: Ops, conn: psycopg.Connection[Any], story: dict[str, Any]) -> None:
    secret = f"{story['payment_id']}_secret_do_not_show"
    body = json.dumps(
        {
            "event_type": "payment_succeeded",
            "content": {
                "object": {
                    "payment_id": story["payment_id"],
                    "client_secret": secret,
                    "sdk_authorization": "cHJvZmlsZV9pZD1wcm9f",
                    "note": f"copied {secret} here",
                }
            },
        }
    ).encode()
    log_id = store(conn, body)

    page = ops.get(f"/ops/deliveries/{log_id}").text
    assert secret not in page and "cHJvZmlsZV9pZD1wcm9f" not in page
    assert "[redacted]" in page
    order_page = ops.get(f"/ops/orders/{story['order_id']}").text
    assert secret not in order_page and PSP_API_KEY not in order_page and OPS_SECRET_KEY not in order_page


def test_an_order_page_shows_its_whole_story_with_every_id_linked(ops: Ops, story: dict[str, Any]) -> None:
    page = ops.get(f"/ops/orders/{story['order_id']}")
    assert page.status_code == 200
    html = page.text
    timeline = html[html.index("<h2>Timeline</h2>") : html.index("<h2>Items")]
    steps = ["payment succeeded", "refund requested", "refund succeeded", "dispute opened"]
    positions = [timeline.index(step) for step in steps]
    assert positions == sorted(positions)
    for seller in (story["seller_a"], story["seller_b"]):
        assert f'href="/ops/sellers/{seller}"' in html
    assert f'href="/ops/users/{story["buyer_id"]}"' in html
    assert story["hyperswitch_refund_id"] in html and story["dispute_id"] in html
    assert html.count('href="/ops/deliveries/') >= 3  # its payment's, refund's and dispute's deliveries
    assert "order_paid" in html and "dispute_opened" in html  # ledger postings
    assert "revoked" in html  # the refunded item's license


def test_search_takes_any_id_to_its_page(
    ops: Ops, conn: psycopg.Connection[Any], story: dict[str, Any]
) -> None:
    plan_id, user_id = uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO subscription_plans (id, name, amount, currency, interval)"
        " VALUES (%s, 'Pro', 999, 'USD', 'month')",
        [plan_id],
    )
    subscription = row(
        conn,
        "INSERT INTO user_subscriptions (user_id, plan_id, status)"
        " VALUES (%s, %s, 'pending_payment') RETURNING id",
        user_id,
        plan_id,
    )["id"]
    invoice = row(
        conn,
        "INSERT INTO subscription_invoices (subscription_id, amount, currency, payment_id)"
        " VALUES (%s, 999, 'USD', 'pay_invoice_0000000000000000001') RETURNING id",
        subscription,
    )["id"]
    delivery = store(conn)
    order_page = f"/ops/orders/{story['order_id']}"
    expected = {
        story["order_id"]: order_page,
        story["payment_id"]: order_page,
        story["refund_id"]: order_page,
        story["hyperswitch_refund_id"]: order_page,
        story["dispute_id"]: order_page,
        subscription: f"/ops/subscriptions/{subscription}",
        invoice: f"/ops/subscriptions/{subscription}",
        "pay_invoice_0000000000000000001": f"/ops/subscriptions/{subscription}",
        user_id: f"/ops/users/{user_id}",
        story["buyer_id"]: f"/ops/users/{story['buyer_id']}",
        story["seller_a"]: f"/ops/sellers/{story['seller_a']}",
        delivery: f"/ops/deliveries/{delivery}",
    }
    for query, target in expected.items():
        response = ops.get("/ops/search", params={"q": f"  {query} "})
        assert (response.status_code, response.headers.get("location")) == (303, target), query
        assert ops.get(target).status_code == 200, target

    assert ops.get("/ops/search", params={"q": "pay_nobody_has_this"}).status_code == 404


def test_the_other_pages_render(
    ops: Ops,
    conn: psycopg.Connection[Any],
    settings: Settings,
    story: dict[str, Any],
) -> None:
    audit = next(sweep for sweep in sweeps.SWEEPS if sweep.name == "audit")
    with psycopg.connect(settings.database_url) as own:
        sweeps.run(audit, sweeps.Context(own, settings, None))

    overview = ops.get("/ops/").text
    assert "Needs a human" in overview and "redrive" in overview
    ledger_card = overview[overview.index("Ledger audit") :]
    assert ledger_card.index('<div class="value ok">ok</div>') < ledger_card.index('<div class="card">')
    seller = ops.get(f"/ops/sellers/{story['seller_a']}").text
    assert "held" in seller and "dispute_opened" in seller and f"/ops/orders/{story['order_id']}" in seller
    disputes = ops.get("/ops/disputes").text
    assert story["dispute_id"] in disputes and ("left" in disputes or "overdue by" in disputes)
    assert f"/ops/orders/{story['order_id']}" in disputes
    assert ops.get(f"/ops/users/{story['buyer_id']}").text.count(str(story["order_id"])) >= 1
    for missing in (
        f"/ops/orders/{uuid.uuid4()}",
        "/ops/orders/not-a-uuid",
        f"/ops/sellers/{uuid.uuid4()}",
        "/ops/deliveries/999999",
    ):
        assert ops.get(missing).status_code == 404


def test_a_subscription_page_shows_its_plan_its_pending_change_and_what_each_invoice_is_for(
    ops: Ops,
    conn: psycopg.Connection[Any],
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    settings: Settings,
) -> None:
    basic, pro = make_plan(conn, 500), make_plan(conn, 900)
    conn.execute("UPDATE subscription_plans SET name = 'Pro' WHERE id = %s", [pro])
    subscription_id = paid_up(conn, client, fake, settings, pro)
    assert "pending plan change</dt><dd>none" in ops.get(f"/ops/subscriptions/{subscription_id}").text

    plan_changes.change(conn, client, subscription_id, basic)  # a downgrade: at period end

    page = ops.get(f"/ops/subscriptions/{subscription_id}").text
    assert f'to plan 500 — 5.00 EUR / month, at period end <span class="id muted">{basic}</span>' in page
    assert "<td>first</td>" in page


# -- actions ------------------------------------------------------------------------------------------


def test_resolving_a_discrepancy_needs_a_note_and_leaves_an_ops_action(
    ops: Ops, conn: psycopg.Connection[Any]
) -> None:
    discrepancy_id = open_discrepancy(conn)
    path = f"/ops/discrepancies/{discrepancy_id}/resolve"
    token = ops.csrf("/ops/inbox")

    refused = ops.post(path, {"csrf_token": token, "note": "   ", "next": "/inbox"})
    assert refused.status_code == 400 and "note is required" in refused.text
    assert rows(conn, "SELECT * FROM ops_actions") == []

    done = ops.post(
        path, {"csrf_token": token, "note": "refunded by hand in the PSP", "next": "/inbox?kind=discrepancy"}
    )
    assert done.status_code == 303 and done.headers["location"] == "/ops/inbox?kind=discrepancy"
    resolved = row(conn, "SELECT resolved_by, resolution FROM discrepancies WHERE id = %s", discrepancy_id)
    assert resolved == {"resolved_by": OPS_USER, "resolution": "refunded by hand in the PSP"}
    assert the_action(conn) == noted("resolve", "discrepancy", discrepancy_id, "refunded by hand in the PSP")
    assert f"discrepancy-{discrepancy_id}" not in ops.get("/ops/inbox").text

    again = ops.post(path, {"csrf_token": token, "note": "twice"})
    assert again.status_code == 400 and "already resolved" in again.text
    assert len(rows(conn, "SELECT * FROM ops_actions")) == 1


def test_an_action_goes_back_only_to_a_console_page(ops: Ops, conn: psycopg.Connection[Any]) -> None:
    token = ops.csrf("/ops/inbox")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        discrepancy_id = open_discrepancy(conn, f"case {target}")
        done = ops.post(
            f"/ops/discrepancies/{discrepancy_id}/resolve",
            {"csrf_token": token, "note": "ok", "next": target},
        )
        assert (done.status_code, done.headers["location"]) == (303, "/ops/inbox")


def test_resolve_is_the_cli_function(ops: Ops, conn: psycopg.Connection[Any]) -> None:
    discrepancy_id = open_discrepancy(conn)
    token = ops.csrf("/ops/inbox")
    assert (
        ops.post(
            f"/ops/discrepancies/{discrepancy_id}/resolve", {"csrf_token": token, "note": "x"}
        ).status_code
        == 303
    )
    with pytest.raises(errors.DomainError, match="already resolved"):
        discrepancies.resolve(conn, discrepancy_id, by="cli", note="again")
    assert (
        ops.post("/ops/discrepancies/987654/resolve", {"csrf_token": token, "note": "x"}).status_code == 404
    )


def test_replaying_a_delivery_queues_it_again_and_leaves_an_ops_action(
    ops: Ops, conn: psycopg.Connection[Any], settings: Settings, broker: dramatiq.Broker
) -> None:
    log_id = store(conn)
    process(settings, log_id)
    assert (
        row(conn, "SELECT processing_result FROM hyperswitch_webhook_log WHERE id = %s", log_id)[
            "processing_result"
        ]
        != "queued"
    )
    token = ops.csrf(f"/ops/deliveries/{log_id}")

    done = ops.post(
        f"/ops/deliveries/{log_id}/replay",
        {"csrf_token": token, "note": "handler fixed", "next": f"/deliveries/{log_id}"},
    )
    assert (done.status_code, done.headers["location"]) == (303, f"/ops/deliveries/{log_id}")
    assert (
        row(conn, "SELECT processing_result FROM hyperswitch_webhook_log WHERE id = %s", log_id)[
            "processing_result"
        ]
        == "queued"
    )
    assert int(broker.do_qsize("webhooks")) == 1  # type: ignore[attr-defined]
    assert the_action(conn) == noted("replay", "delivery", log_id, "handler fixed")
    assert "handler fixed" in ops.get(f"/ops/deliveries/{log_id}").text

    forged = store(conn, signed=False)
    refused = ops.post(f"/ops/deliveries/{forged}/replay", {"csrf_token": token, "note": "try"})
    assert refused.status_code == 400 and "invalid signature" in refused.text
    assert len(rows(conn, "SELECT * FROM ops_actions")) == 1


def test_holding_and_releasing_a_sellers_payouts_need_a_note_and_leave_ops_actions(
    ops: Ops, conn: psycopg.Connection[Any]
) -> None:
    seller_id = uuid.uuid4()
    page = f"/ops/sellers/{seller_id}"
    token = ops.csrf("/ops/")
    form = {"csrf_token": token, "next": f"/sellers/{seller_id}"}

    refused = ops.post(f"{page}/hold", {**form, "note": "  "})
    assert refused.status_code == 400 and "note is required" in refused.text
    assert (
        rows(conn, "SELECT * FROM seller_payout_holds") == []
        and rows(conn, "SELECT * FROM ops_actions") == []
    )

    held = ops.post(f"{page}/hold", {**form, "note": "chargebacks under review"})
    assert (held.status_code, held.headers["location"]) == (303, page)
    hold = row(conn, "SELECT reason, released_at FROM seller_payout_holds WHERE seller_id = %s", seller_id)
    assert hold == {"reason": "chargebacks under review", "released_at": None}  # hold-payouts' row
    shown = ops.get(page).text
    assert "chargebacks under review" in shown and f'action="{page}/release"' in shown
    assert f'href="{page}"' in ops.get("/ops/").text  # the overview lists the held sellers
    twice = ops.post(f"{page}/hold", {**form, "note": "again"})
    assert twice.status_code == 400 and "already held" in twice.text

    released = ops.post(f"{page}/release", {**form, "note": "review done: nothing wrong"})
    assert (released.status_code, released.headers["location"]) == (303, page)
    with pytest.raises(errors.DomainError, match="not held"):  # release-payouts' function agrees
        payouts.release(conn, seller_id)
    assert f'action="{page}/hold"' in ops.get(page).text
    assert rows(
        conn, "SELECT username, action, object_kind, object_id, note FROM ops_actions ORDER BY id"
    ) == [
        {"username": OPS_USER, "action": a, "object_kind": "seller", "object_id": str(seller_id), "note": n}
        for a, n in [("hold", "chargebacks under review"), ("release", "review done: nothing wrong")]
    ]


def test_retrying_a_failed_automatic_refund_from_the_inbox(
    ops: Ops,
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
    broker: dramatiq.Broker,
) -> None:
    failed = failed_automatic_refund(conn, settings, client, fake)
    path = f"/ops/refunds/{failed['id']}/retry"
    inbox = ops.get("/ops/inbox?kind=refund").text
    assert f'id="refund-{failed["id"]}"' in inbox and f'action="{path}"' in inbox
    token = csrf_token_in(inbox)

    refused = ops.post(path, {"csrf_token": token, "note": ""})
    assert refused.status_code == 400 and "note is required" in refused.text
    assert len(rows(conn, "SELECT 1 FROM refunds")) == 1 and rows(conn, "SELECT * FROM ops_actions") == []

    done = ops.post(
        path, {"csrf_token": token, "note": "the buyer's card was replaced", "next": "/inbox?kind=refund"}
    )
    assert (done.status_code, done.headers["location"]) == (303, "/ops/inbox?kind=refund")
    retry = row(conn, "SELECT status, amount, retry_of, automatic FROM refunds WHERE retry_of IS NOT NULL")
    assert retry == {
        "status": "pending",
        "amount": failed["amount"],
        "retry_of": failed["id"],
        "automatic": True,
    }
    assert row(conn, "SELECT status FROM refunds WHERE id = %s", failed["id"])["status"] == "failed"
    assert int(broker.do_qsize("refunds")) == 1  # type: ignore[attr-defined]
    assert the_action(conn) == noted("retry", "refund", failed["id"], "the buyer's card was replaced")
    assert f"refund-{failed['id']}" not in ops.get("/ops/inbox").text

    again = ops.post(path, {"csrf_token": token, "note": "twice"})
    assert again.status_code == 400 and "is pending" in again.text
    assert len(rows(conn, "SELECT * FROM ops_actions")) == 1
    assert_audit_ok(conn)


def test_payouts_are_listed_found_by_any_of_their_ids_and_failed_ones_wait_in_the_inbox(
    ops: Ops,
    conn: psycopg.Connection[Any],
    settings: Settings,
    client: hyperswitch.Client,
    fake: FakeHyperswitch,
) -> None:
    payout = sent_payout(conn, settings, client, fake)
    page = f"/ops/payouts/{payout['id']}"
    listed = ops.get("/ops/payouts").text
    assert f'href="{page}"' in listed and f'href="/ops/sellers/{SELLER_A}"' in listed
    assert payout["hyperswitch_payout_id"] in listed
    assert page in ops.get("/ops/payouts?status=pending").text
    assert page not in ops.get("/ops/payouts?status=paid").text
    shown = ops.get(page).text
    assert (
        payout["merchant_reference"] in shown and "payout_created" in shown and 'href="/ops/orders/' in shown
    )
    assert f'href="{page}"' in ops.get(f"/ops/sellers/{SELLER_A}").text
    overview = ops.get("/ops/").text
    assert "In transit to sellers" in overview and "8.00 USD" in overview
    for query in (payout["id"], payout["hyperswitch_payout_id"], payout["merchant_reference"]):
        found = ops.get("/ops/search", params={"q": str(query)})
        assert (found.status_code, found.headers.get("location")) == (303, page), query

    failed = settle_payout(fake, payout["hyperswitch_payout_id"], "failed", "account closed")
    assert process(settings, store(conn, webhook_body("payout_failed", dict(failed)))) == "ok"
    inbox = ops.get("/ops/inbox?kind=payout").text
    assert f'id="payout-{payout["id"]}"' in inbox and "account closed" in inbox
    assert f'href="/ops/sellers/{SELLER_A}"' in inbox


# -- configuration ------------------------------------------------------------------------------------


def test_the_web_process_does_not_start_without_the_secret_key(settings: Settings) -> None:
    app = create_app(dataclasses.replace(ops_settings(settings), ops_secret_key=None))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(errors.ConfigError, match=r"^OPS_SECRET_KEY is required"):
        anyio.run(start)


def test_hash_password_prints_an_argon2_hash_of_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veza_worker.cli", "hash-password"],
        input="s3cret passphrase\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert re.fullmatch(r"\$argon2id\$\S+", printed)
    assert argon2.PasswordHasher().verify(printed, "s3cret passphrase")

    empty = subprocess.run(
        [sys.executable, "-m", "veza_worker.cli", "hash-password"], input="\n", capture_output=True, text=True
    )
    assert empty.returncode == 1 and "empty password" in empty.stderr
