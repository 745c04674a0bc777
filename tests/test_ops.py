"""What ops see: real /metrics of a 2-worker uvicorn and of a Dramatiq worker, sweep runs and
`status`, JSON logs without secrets, the alert rules and dashboard naming only real metrics, and a
flood of forged deliveries that cannot fill the disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from receiver.app import create_app
from tests.fake_hyperswitch import FakeHyperswitch
from tests.support import (
    PSP_API_KEY,
    SECRET,
    TEST_REDIS_URL,
    ServerThread,
    envelope,
    log_rows,
    make_order,
    post_webhook,
    row,
    rows,
    run_cli,
    wait_for,
)
from veza_worker import events, hyperswitch, ops, sweeps
from veza_worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "metrics-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def started(command: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            return process
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each process group sets its own
    return {**env, "HYPERSWITCH_WEBHOOK_SECRET": SECRET, **extra}


@pytest.fixture
def web(database_url: str, broker: dramatiq.Broker, tmp_path: Path) -> Iterator[str]:
    """The Procfile's web command with two uvicorn workers, METRICS_TOKEN set, JSON logs."""
    port = free_port()
    env = environment(
        database_url,
        WEB_CONCURRENCY="2",
        METRICS_TOKEN=TOKEN,
        LOG_FORMAT="json",
        UVICORN_LOG_CONFIG=str(ROOT / "ops" / "uvicorn-log-config.json"),  # the supervisor's own lines too
    )
    command = [str(BIN / "uvicorn"), "receiver.app:app", "--host", "127.0.0.1", "--port", str(port)]
    process = started(command, env, f"http://127.0.0.1:{port}/healthz", tmp_path / "web.log")
    yield f"http://127.0.0.1:{port}"
    stop(process)


def test_two_web_workers_count_every_delivery_exactly_and_metrics_need_the_token(
    web: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    for _ in range(7):
        assert post_webhook(web, envelope("mandate_active")).status_code == 200
    for _ in range(3):
        assert post_webhook(web, envelope(), secret="not-the-secret").status_code == 401
    for _ in range(2):
        assert post_webhook(web, b"x" * 300_000).status_code == 413

    assert httpx.get(f"{web}/metrics").status_code == 401
    assert httpx.get(f"{web}/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    scrapes = [httpx.get(f"{web}/metrics", headers={"authorization": f"Bearer {TOKEN}"}) for _ in range(4)]

    for scrape in scrapes:  # whichever worker answers, the counts are the whole server's
        assert scrape.status_code == 200
        values = samples(scrape.text)
        assert values[("veza_webhook_deliveries_total", (("outcome", "accepted"),))] == 7
        assert values[("veza_webhook_deliveries_total", (("outcome", "signature_invalid"),))] == 3
        assert values[("veza_webhook_deliveries_total", (("outcome", "too_large"),))] == 2
        assert values[("veza_webhook_request_seconds_count", ())] == 12
        assert values[("veza_outbox_queued", ())] == 7  # no worker runs: the 7 rows wait
        assert values[("veza_subscriptions", (("status", "active"),))] == 0
    log = (tmp_path / "web.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert not any("METRICS_TOKEN is not set" in line["message"] for line in lines)  # it is set
    assert TOKEN not in log and SECRET not in log


@contextlib.contextmanager
def dramatiq_worker(database_url: str, psp_url: str, log: Path) -> Iterator[str]:
    """The Procfile's worker command (1 process, 2 threads), its metrics on a port of its own."""
    prom_port = free_port()
    env = environment(
        database_url,
        dramatiq_prom_port=str(prom_port),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_db=tempfile.mkdtemp(prefix="veza-test-worker-prom-"),
        HYPERSWITCH_ENABLED="true",
        HYPERSWITCH_URL=psp_url,
        HYPERSWITCH_API_KEY=PSP_API_KEY,
        LOG_FORMAT="json",
    )
    command = [str(BIN / "dramatiq"), "veza_worker.actors", "--processes", "1", "--threads", "2"]
    worker = started(command, env, f"http://127.0.0.1:{prom_port}/", log)
    try:
        yield f"http://127.0.0.1:{prom_port}/"
    finally:
        stop(worker)


def worker_traffic(conn: psycopg.Connection[Any], receiver_url: str) -> None:
    """3 deliveries skipped, 2 in error, one reconcile tick that settles a stuck order."""
    for _ in range(3):
        post_webhook(receiver_url, envelope("mandate_active"))
    for _ in range(2):
        post_webhook(
            receiver_url, b'{"event_type": "payment_succeeded", "content": {"object": {"payment_id": 7}}}'
        )
    make_order(conn, [(uuid.uuid4(), 500)], payment_id=hyperswitch.merchant_id("pay", uuid.uuid4()))
    conn.execute("UPDATE orders SET created_at = now() - interval '1 hour'")
    from veza_worker import actors

    actors.SWEEPS["reconcile"].send()
    wait_for(lambda: len([r for r in log_rows(conn) if r["processing_result"] != "queued"]) >= 6, timeout=30)
    wait_for(
        lambda: bool(
            rows(conn, "SELECT 1 FROM sweep_runs WHERE name = 'reconcile' AND finished_at IS NOT NULL")
        )
    )


def test_a_dramatiq_worker_exposes_its_metrics_and_ours(
    database_url: str,
    conn: psycopg.Connection[Any],
    settings: Settings,
    web: str,
    psp: tuple[str, FakeHyperswitch],
    tmp_path: Path,
) -> None:
    sweeps.record_clock_start(conn)  # the clock's metric exists once a clock started
    with psycopg.connect(database_url) as own:  # veza_ledger_violations exists once an audit ran
        audit_sweep = next(sweep for sweep in sweeps.SWEEPS if sweep.name == "audit")
        sweeps.run(audit_sweep, sweeps.Context(own, settings, None))
    with dramatiq_worker(database_url, psp[0], tmp_path / "worker.log") as worker_metrics:
        worker_traffic(conn, web)
        # A result row commits before its worker counts it: wait for the counters, not the rows.
        skipped = ("veza_webhook_results_total", (("result", "skipped"),))
        wait_for(lambda: samples(httpx.get(worker_metrics, timeout=5).text).get(skipped, 0) >= 3)
        worker_text = httpx.get(worker_metrics, timeout=5).text
    web_text = httpx.get(f"{web}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text

    values = samples(worker_text)
    assert values[("veza_webhook_results_total", (("result", "skipped"),))] == 3
    assert values[("veza_webhook_results_total", (("result", "error"),))] == 2
    assert (
        values[("veza_psp_requests_total", (("endpoint", "GET /payments/{id}"), ("outcome", "not_found")))]
        == 1
    )
    assert values[("veza_reconcile_actions_total", (("action", "settled"), ("phase", "orders")))] == 1
    assert (
        values[("dramatiq_messages_total", (("actor_name", "process_webhook"), ("queue_name", "webhooks")))]
        == 5
    )
    log = (tmp_path / "worker.log").read_text()
    assert PSP_API_KEY not in log and SECRET not in log
    # Every metric the alert rules and the dashboard use is one these two processes expose.
    exposed = {name for name, _ in samples(worker_text)} | {name for name, _ in samples(web_text)}
    assert used_metrics() - exposed == set()


# -- sweeps, status, the dead clock ----------------------------------------------------------------


def test_every_sweep_records_its_runs_and_status_sees_a_dead_clock(
    conn: psycopg.Connection[Any], settings: Settings
) -> None:
    for command in ("redrive", "cleanup", "trial-end", "renew", "automatic-refunds", "audit"):
        assert run_cli(command, settings=settings).returncode == 0
    runs = rows(conn, "SELECT name, counts, error FROM sweep_runs ORDER BY id")
    names = ["redrive", "retention", "trial_end", "renew", "automatic_refunds", "audit"]
    assert [r["name"] for r in runs] == names
    assert runs[0]["counts"] == {"redriven": 0} and all(r["error"] is None for r in runs)

    fine = run_cli("status", settings=settings, RECONCILE_WORKER_ENABLED="false")
    assert fine.returncode == 0, fine.stderr
    document = json.loads(fine.stdout)
    assert set(document) == {
        "outbox",
        "results_last_hour",
        "stuck",
        "needs_a_human",
        "subscriptions",
        "disputes",
        "ledger",
        "payouts",
        "clock_started_at",
        "sweeps",
    }
    assert document["ledger"]["violations"] == 0 and document["ledger"]["audited_at"] is not None
    never_ran = ["settle"]  # it needs a PSP: not run here, not overdue before any clock started
    assert {name: s["overdue"] for name, s in document["sweeps"].items()} == dict.fromkeys(
        names + never_ran, False
    )

    conn.execute(
        "UPDATE sweep_runs"
        " SET started_at = started_at - interval '1 hour', finished_at = finished_at - interval '1 hour'"
    )
    conn.execute("INSERT INTO clock_start (first_started_at) VALUES (now() - interval '2 hours')")
    dead = run_cli("status", settings=settings, RECONCILE_WORKER_ENABLED="false")
    assert dead.returncode == 1
    assert "a sweep is overdue or rows need a human" in dead.stderr
    sweeps = json.loads(dead.stdout)["sweeps"]
    assert sweeps["redrive"]["overdue"] and sweeps["renew"]["overdue"] and not sweeps["retention"]["overdue"]
    gauges = ops.gauges(conn, settings)
    assert time.time() - gauges["last_success"]["redrive"].timestamp() > 3600


def test_status_lists_what_needs_a_human(conn: psycopg.Connection[Any], settings: Settings) -> None:
    from tests.support import store

    log_id = store(conn)
    conn.execute(
        "UPDATE hyperswitch_webhook_log SET processing_result = 'error: amount mismatch' WHERE id = %s",
        [log_id],
    )

    with psycopg.connect(settings.database_url) as own:
        document, healthy = ops.status(own, replace(settings, reconcile_worker_enabled=False))

    assert not healthy
    [human] = document["needs_a_human"]
    assert (human["kind"], human["id"], human["why"]) == (
        "webhook_log",
        str(log_id),
        "error: amount mismatch",
    )
    assert ops.gauges(conn, settings)["needs_human"] == 1


# -- JSON logs -------------------------------------------------------------------------------------


def test_json_logs_parse_line_by_line_carry_the_fields_and_no_secret(
    conn: psycopg.Connection[Any], psp_settings: Settings, fake: FakeHyperswitch, client: hyperswitch.Client
) -> None:
    payment_id = hyperswitch.merchant_id("pay", uuid.uuid4())
    make_order(conn, [(uuid.uuid4(), 500)], payment_id=payment_id)
    conn.execute("UPDATE orders SET created_at = now() - interval '1 hour'")

    done = run_cli(
        "-v", "reconcile", settings=psp_settings, LOG_FORMAT="json", HYPERSWITCH_WEBHOOK_SECRET=SECRET
    )

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    [action] = [line for line in lines if line.get("phase") == "orders" and "action" in line]
    assert (action["action"], action["id"]) == ("settled", str(row(conn, "SELECT id FROM orders")["id"]))
    assert str(psp_settings.hyperswitch_api_key) not in done.stderr and SECRET not in done.stderr


# -- the alert rules and the dashboard -------------------------------------------------------------


def used_metrics() -> set[str]:
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return set(re.findall(r"\b(?:veza|dramatiq)_[a-z_]+\b", " ".join(exprs)))


# -- a flood of forged deliveries ------------------------------------------------------------------


def test_a_flood_of_forged_posts_cannot_fill_the_disk_and_valid_ones_keep_flowing(
    settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    limited = replace(settings, invalid_signature_rows_per_minute=100)
    with ServerThread(create_app(limited)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        forged = envelope()
        bad = {"content-type": "application/json", events.SIGNATURE_HEADER: "00" * 64}
        answers = [
            http.post("/webhooks/hyperswitch", content=forged, headers=bad).status_code for _ in range(5_000)
        ]
        valid = post_webhook(server.url, envelope())

    assert set(answers) == {401} and valid.status_code == 200
    stored = rows(conn, "SELECT suppressed_count FROM hyperswitch_webhook_log WHERE NOT signature_valid")
    assert len(stored) <= 2 * 100  # a minute boundary may fall inside the flood
    assert len(stored) + sum(r["suppressed_count"] for r in stored) == 5_000
    assert len(rows(conn, "SELECT 1 FROM hyperswitch_webhook_log WHERE signature_valid")) == 1
