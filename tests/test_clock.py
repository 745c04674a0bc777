"""The clock only enqueues; two clocks never make a row processed twice; SIGTERM stops it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from tests.support import SECRET, clock_until, envelope
from veza_worker import clock, events, webhooks
from veza_worker.settings import Settings


def queued_actor_names(broker: dramatiq.Broker, queue: str) -> list[str]:
    raw = broker.client.hvals(f"dramatiq:{queue}.msgs")  # type: ignore[attr-defined]
    return sorted(dramatiq.Message.decode(data).actor_name for data in raw)


@pytest.fixture
def fast_clocks(settings: Settings) -> Iterator[list[Any]]:
    """Clocks whose minute is 50 ms (the floor) and whose day is 86 ms; the test starts them."""
    schedulers: list[Any] = []
    yield schedulers
    for scheduler in schedulers:
        scheduler.shutdown(wait=True)


def start_fast_clock(settings: Settings, schedulers: list[Any]) -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    clock.schedule(scheduler, settings, scale=1e-6)
    scheduler.start()
    schedulers.append(scheduler)


def test_the_clock_enqueues_each_sweep_and_does_no_work_itself(
    settings: Settings, broker: dramatiq.Broker, fast_clocks: list[Any]
) -> None:
    start_fast_clock(settings, fast_clocks)
    time.sleep(0.6)
    fast_clocks.pop().shutdown(wait=True)

    names = queued_actor_names(broker, "sweeps")
    assert set(names) == {
        "redrive_webhooks",
        "cleanup_webhook_log",
        "end_trials",
        "renew_subscriptions",
        "send_automatic_refunds",
        "audit_ledger",
        "reconcile",
        "settle",
    }
    assert names.count("redrive_webhooks") >= 3
    assert queued_actor_names(broker, "webhooks") == []  # the clock itself does no work


def test_reconciliation_is_not_scheduled_when_disabled(settings: Settings) -> None:
    enabled, disabled = BackgroundScheduler(timezone="UTC"), BackgroundScheduler(timezone="UTC")
    clock.schedule(enabled, replace(settings, reconcile_interval=timedelta(minutes=15)))
    clock.schedule(disabled, replace(settings, reconcile_worker_enabled=False))

    assert str(enabled.get_job("reconcile").trigger) == "interval[0:15:00]"
    assert disabled.get_job("reconcile") is None
    assert {job.id for job in disabled.get_jobs()} == {
        "redrive",
        "trial_end",
        "renew",
        "automatic_refunds",
        "retention",
        "audit",
        "settle",
    }


def test_two_clocks_still_enqueue_each_stuck_row_once(
    settings: Settings,
    conn: psycopg.Connection[Any],
    broker: dramatiq.Broker,
    fast_clocks: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(30):
        body = envelope()
        headers = {events.SIGNATURE_HEADER: events.sign(body, SECRET)}
        webhooks.insert_log_sync(conn, webhooks.delivery(body, headers, None, (SECRET,)))
    conn.execute("UPDATE hyperswitch_webhook_log SET received_at = now() - interval '5 minutes'")
    start_fast_clock(settings, fast_clocks)
    start_fast_clock(settings, fast_clocks)
    time.sleep(0.5)
    assert queued_actor_names(broker, "sweeps").count("redrive_webhooks") >= 6  # both clocks fired

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    sweeper = dramatiq.Worker(broker, queues={"sweeps"}, worker_threads=4, worker_timeout=50)
    sweeper.start()  # every redrive message of both clocks runs, four at a time
    try:
        time.sleep(0.5)
        broker.join("sweeps", timeout=20_000)
    finally:
        sweeper.stop()

    assert len(queued_actor_names(broker, "webhooks")) == 30


def test_the_clock_process_stops_cleanly_on_sigterm(database_url: str) -> None:
    logged = clock_until(database_url, "clock scheduled retention")

    assert "clock stopping on signal 15" in logged
