"""The sweep table: one declaration that the clock, the actors, the CLI, `status`, /metrics and the
alert rules all follow; and when a sweep counts as overdue (from the clock's first start)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
import yaml
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client.parser import text_string_to_metric_families

from tests.support import clock_until, make_order, row, rows, run_cli
from veza_worker import actors, automatic_refunds, cli, clock, metrics, ops, sweeps
from veza_worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# -- the overdue rule, without services ------------------------------------------------------------


def test_before_any_clock_started_nothing_is_overdue() -> None:
    assert not sweeps.overdue(MINUTE, None, None, NOW)
    assert not sweeps.overdue(MINUTE, NOW - timedelta(days=30), None, NOW)


def test_a_sweep_that_never_ran_is_overdue_two_intervals_after_the_clock_first_started() -> None:
    assert not sweeps.overdue(MINUTE, None, NOW - 2 * MINUTE, NOW)
    assert sweeps.overdue(MINUTE, None, NOW - 2 * MINUTE - timedelta(seconds=1), NOW)


def test_the_later_of_last_success_and_clock_start_counts() -> None:
    long_ago, just_now = NOW - timedelta(days=3), NOW - timedelta(seconds=30)
    assert not sweeps.overdue(MINUTE, long_ago, just_now, NOW)  # a clock back after days: time to run
    assert not sweeps.overdue(MINUTE, just_now, long_ago, NOW)
    assert sweeps.overdue(MINUTE, NOW - 3 * MINUTE, long_ago, NOW)


# -- one declaration, read by every entry point ----------------------------------------------------


def test_the_contract_names_are_declared_each_once() -> None:
    names = [sweep.name for sweep in sweeps.SWEEPS]
    commands = [sweep.command for sweep in sweeps.SWEEPS]
    actor_names = [sweep.actor for sweep in sweeps.SWEEPS]
    for declared in (names, commands, actor_names):
        assert len(declared) == len(set(declared))
    assert {"reconcile", "redrive", "retention", "trial_end", "renew", "automatic_refunds"} <= set(names)
    assert {"reconcile", "cleanup", "redrive", "trial-end", "renew", "automatic-refunds"} <= set(commands)


def test_a_sweep_that_names_a_missing_setting_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="no field 'payout_intervall'"):
        sweeps.Sweep("x", command="x", actor="x", help="", run=lambda c: {}, every="payout_intervall")


def test_every_sweep_has_its_actor_and_its_command() -> None:
    parser = cli.build_parser()
    for sweep in sweeps.SWEEPS:
        actor = actors.SWEEPS[sweep.name]
        assert (actor.actor_name, actor.queue_name) == (sweep.actor, "sweeps")
        assert actor.options["time_limit"] == sweep.time_limit.total_seconds() * 1000
        assert actor.options["max_retries"] == 0
        assert parser.parse_args([sweep.command]).command == sweep.command


def test_the_clock_schedules_every_enabled_sweep_and_only_those(settings: Settings) -> None:
    on, off = BackgroundScheduler(timezone="UTC"), BackgroundScheduler(timezone="UTC")
    clock.schedule(on, replace(settings, reconcile_interval=timedelta(minutes=15), payouts_enabled=True))
    clock.schedule(off, replace(settings, reconcile_worker_enabled=False))

    assert {job.id for job in on.get_jobs()} == {sweep.name for sweep in sweeps.SWEEPS}
    assert {job.id for job in off.get_jobs()} == {sweep.name for sweep in sweeps.SWEEPS} - {
        "reconcile",
        "pay_sellers",  # PAYOUTS_ENABLED is false by default
    }
    assert str(on.get_job("pay_sellers").trigger) == "interval[1 day, 0:00:00]"
    assert str(on.get_job("reconcile").trigger) == "interval[0:15:00]"
    assert str(on.get_job("automatic_refunds").trigger) == "interval[0:01:00]"
    assert "hour='3', minute='17'" in str(on.get_job("retention").trigger)


def test_the_automatic_refund_outbox_is_a_recorded_sweep_run_by_a_worker(
    settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker, worker: dramatiq.Worker
) -> None:
    actors.SWEEPS["automatic_refunds"].send()
    broker.join("sweeps", timeout=20_000)

    [run] = rows(conn, "SELECT name, counts, error, finished_at FROM sweep_runs")
    assert (run["name"], run["counts"], run["error"]) == (
        "automatic_refunds",
        {"sent": 0, "rejected": 0, "ambiguous": 0},
        None,
    )
    gauges = ops.gauges(conn, settings)
    assert gauges["last_success"]["automatic_refunds"] == run["finished_at"]


def test_the_outbox_sweep_without_a_psp_fails_only_while_a_refund_waits(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    assert json.loads(run_cli("automatic-refunds", settings=settings).stdout) == {
        "sent": 0,
        "rejected": 0,
        "ambiguous": 0,
    }
    order_id = make_order(conn, [(uuid.uuid4(), 700)], status="failed", payment_id="pay_" + "a" * 26)
    assert automatic_refunds.open_refund(
        conn, order_id=order_id, amount=700, currency="USD", note="automatic: x"
    )

    stuck = run_cli("automatic-refunds", settings=settings)

    assert stuck.returncode == 1
    assert stuck.stderr.strip().endswith("payment provider not configured: automatic refunds wait")
    runs = rows(conn, "SELECT name, error FROM sweep_runs ORDER BY id")
    assert [r["name"] for r in runs] == ["automatic_refunds", "automatic_refunds"]
    assert runs[0]["error"] is None and "automatic refunds wait" in runs[1]["error"]


# -- status and the clock's first start ------------------------------------------------------------


def test_right_after_a_fresh_start_status_is_healthy_and_says_no_clock_started(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    done = run_cli("status", settings=settings)

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["clock_started_at"] is None
    assert set(document["sweeps"]) == {sweep.name for sweep in sweeps.enabled(settings)}
    assert not any(sweep["overdue"] for sweep in document["sweeps"].values())


def test_a_sweep_that_never_ran_is_overdue_only_two_intervals_after_the_clock_started(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    first = sweeps.record_clock_start(conn)
    assert sweeps.record_clock_start(conn) == first  # a restart keeps the first start
    document, healthy = ops.status(conn, settings)
    assert healthy and document["clock_started_at"] == first

    conn.execute("UPDATE clock_start SET first_started_at = now() - interval '3 minutes'")
    document, healthy = ops.status(conn, settings)

    overdue = {name for name, sweep in document["sweeps"].items() if sweep["overdue"]}
    assert not healthy
    assert overdue == {"redrive", "automatic_refunds"}  # every minute; 5 minutes, 1 h, 1 d: not yet


def test_the_clock_process_records_its_first_start(database_url: str, conn: psycopg.Connection[Any]) -> None:
    for _ in range(2):
        clock_until(database_url, "clock first started at")

    [clock_row] = rows(conn, "SELECT first_started_at FROM clock_start")
    assert datetime.now(UTC) - clock_row["first_started_at"] < timedelta(minutes=1)


def test_metrics_expose_the_clock_start_once_known_and_each_enabled_sweeps_interval(
    settings: Settings, conn: psycopg.Connection[Any]
) -> None:
    disabled = replace(settings, reconcile_worker_enabled=False)
    before = exposition(ops.gauges(conn, disabled))
    started = sweeps.record_clock_start(conn)
    after = exposition(ops.gauges(conn, disabled))

    assert "veza_clock_started_timestamp_seconds" not in {name for name, _ in before}
    assert after[("veza_clock_started_timestamp_seconds", ())] == started.timestamp()
    intervals = {
        labels[0][1]: v for (name, labels), v in after.items() if name == "veza_sweep_interval_seconds"
    }
    assert intervals == {
        sweep.name: sweep.interval(settings).total_seconds() for sweep in sweeps.enabled(disabled)
    }
    assert "reconcile" not in intervals  # disabled: no alert can ask for it
    last = {labels[0][1] for (name, labels), _ in after.items() if name.startswith("veza_sweep_last_success")}
    assert last == {sweep.name for sweep in sweeps.SWEEPS}


def exposition(gauges: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(gauges).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- the alert rules and the dashboard follow the table --------------------------------------------

_SWEEP_MATCHER = re.compile(r'sweep\s*(=~|=)\s*"([^"]*)"')


def sweeps_named(expr: str) -> list[str]:
    """The sweeps an expression's `sweep` matchers name (`=` one, `=~` an alternation)."""
    return [name for _, value in _SWEEP_MATCHER.findall(expr) for name in value.split("|")]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alert_rules_cover_every_declared_sweep_exactly_once() -> None:
    overdue_rules = [r for r in alert_rules() if "veza_sweep_last_success_timestamp_seconds" in r["expr"]]
    covered = [name for rule in overdue_rules for name in sweeps_named(rule["expr"])]

    assert sorted(covered) == sorted(sweep.name for sweep in sweeps.SWEEPS)
    for rule in overdue_rules:  # each counts from the clock's start and the sweep's own interval
        assert "veza_clock_started_timestamp_seconds" in rule["expr"]
        assert "2 * veza_sweep_interval_seconds" in rule["expr"]


def test_a_clock_that_never_started_alerts_after_a_delay() -> None:
    [never] = [r for r in alert_rules() if "absent(veza_clock_started_timestamp_seconds)" in r["expr"]]
    assert never["for"]


def test_the_dashboard_names_no_sweep_that_is_not_declared() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert any("veza_sweep_last_success_timestamp_seconds" in expr for expr in exprs)
    named = {name for expr in exprs for name in sweeps_named(expr)}
    assert named <= {sweep.name for sweep in sweeps.SWEEPS}


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)"
)
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    for command in (
        ["promtool", "check", "rules", str(ROOT / "ops" / "alerts.yml")],
        ["promtool", "test", "rules", str(ROOT / "tests" / "sweep_alerts_test.yml")],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_refund_opened_by_a_sweep_is_enqueued_after_its_commit(
    settings: Settings, conn: psycopg.Connection[Any], broker: dramatiq.Broker
) -> None:
    order_id = make_order(conn, [(uuid.uuid4(), 300)], status="failed", payment_id="pay_" + "b" * 26)

    def opens_a_refund(context: sweeps.Context) -> dict[str, Any]:
        with context.conn.transaction():
            automatic_refunds.open_refund(
                context.conn, order_id=order_id, amount=300, currency="USD", note="automatic: test"
            )
            assert queued(broker, "refunds") == []  # not before the commit
        return {"opened": 1}

    test_sweep = sweeps.Sweep("test_sweep", command="t", actor="t", help="", run=opens_a_refund, every=MINUTE)
    with psycopg.connect(settings.database_url) as own:
        assert sweeps.run(test_sweep, sweeps.Context(own, settings, None)) == {"opened": 1}

    refund_id = row(conn, "SELECT id FROM refunds")["id"]
    assert queued(broker, "refunds") == [("send_one_automatic_refund", (str(refund_id),))]


def queued(broker: dramatiq.Broker, queue: str) -> list[tuple[str, tuple[Any, ...]]]:
    raw = broker.client.hvals(f"dramatiq:{queue}.msgs")  # type: ignore[attr-defined]
    return [(m.actor_name, tuple(m.args)) for m in map(dramatiq.Message.decode, raw)]


def test_a_clock_that_cannot_reach_the_database_records_its_start_a_minute_later(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    unreachable = replace(settings, database_url="postgresql://postgres@127.0.0.1:1/veza")

    clock.record_start(scheduler, unreachable)

    [retry] = scheduler.get_jobs()
    assert retry.func is clock.record_start
    assert any("clock start not recorded" in r.getMessage() for r in caplog.records)
