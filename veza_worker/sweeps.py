"""The sweep table: every periodic job, declared once.

The clock schedules each enabled sweep, actors.py makes a Dramatiq actor of each, the CLI a
command of each (`veza-worker <command>`), and `status`, /metrics and the alert-rules test read
the same rows. Adding a sweep is one row here, plus its line in ops/alerts.yml (a test checks).

Each run is recorded in sweep_runs. A sweep is overdue two intervals after its last success or
the clock's first start, whichever is later: one that never ran is not overdue the moment a clock
starts, and before any clock has started nothing is overdue (its alert fires on the absent metric).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from veza_worker import (
    audit,
    automatic_refunds,
    db,
    errors,
    hyperswitch,
    payouts,
    reconcile,
    retention,
    settle,
    webhooks,
)
from veza_worker.settings import Settings
from veza_worker.subscriptions import billing

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

_SETTINGS = {f.name for f in dataclasses.fields(Settings)}


@dataclass(frozen=True)
class Context:
    """What a sweep runs with, given by its entry point: a worker's actor or the CLI."""

    conn: db.Connection
    settings: Settings
    client: hyperswitch.Client | None
    options: Mapping[str, str | None] = dataclasses.field(default_factory=dict)  # the command's, by hand

    @property
    def psp(self) -> hyperswitch.Client:
        """The client of a sweep that `needs_psp`: its entry point checked there is one."""
        if self.client is None:
            raise errors.PaymentProviderNotConfigured("payment provider not configured")
        return self.client


@dataclass(frozen=True)
class Sweep:
    name: str  # sweep_runs.name, the metrics' `sweep` label, the clock's job id
    actor: str  # the Dramatiq actor's name, which queued messages carry: never renamed
    help: str
    run: Callable[[Context], dict[str, Any]]
    every: timedelta | str  # a fixed interval, or the Settings field that holds it
    command: str = ""  # `veza-worker <command>`: one run now, its counts printed; "": the name, with dashes
    cron: str | None = None  # a crontab line (UTC) the clock follows instead; `every` still sets overdue
    enabled_by: str | None = None  # a boolean Settings field: false, no clock runs it, none expects it
    needs_psp: bool = False  # without a PSP the actor skips it (WARNING) and the command exits 1
    # What the command says on exit 1 when the run found something wrong (None: all well).
    verdict: Callable[[dict[str, Any]], str | None] | None = None
    time_limit: timedelta = timedelta(minutes=10)  # Dramatiq's default
    # The command's options, each `--<name> T`, given to `run` as Context.options[name] (None when
    # not given); the clock's runs have none.
    options: tuple[tuple[str, str], ...] = ()  # (name, help)

    def __post_init__(self) -> None:
        if not self.command:
            object.__setattr__(self, "command", self.name.replace("_", "-"))
        for field in (self.every, self.enabled_by):
            if isinstance(field, str) and field not in _SETTINGS:
                raise ValueError(f"sweep {self.name}: Settings has no field {field!r}")

    def interval(self, settings: Settings) -> timedelta:
        """How often the clock sends it; it is overdue after twice this."""
        value = getattr(settings, self.every) if isinstance(self.every, str) else self.every
        assert isinstance(value, timedelta), f"sweep {self.name}: {self.every} is not a duration"
        return value

    def enabled(self, settings: Settings) -> bool:
        return self.enabled_by is None or getattr(settings, self.enabled_by) is True


# -- what each sweep runs ---------------------------------------------------------------------------


def _reconcile(context: Context) -> dict[str, Any]:
    return reconcile.tick(context.conn, context.psp, context.settings)


def _redrive(context: Context) -> dict[str, Any]:
    from veza_worker import actors  # the broker: imported when a sweep enqueues, so the rest need no Redis

    return webhooks.redrive(context.conn, actors.process_webhook.send)


def _retention(context: Context) -> dict[str, Any]:
    """The audit log's retention, then sweep_runs' own (30 days)."""
    days = timedelta(days=context.settings.webhook_log_retention_days)
    counts = retention.cleanup(context.conn, days)
    with context.conn.transaction():
        context.conn.execute(QUERIES["prune_runs"])
    return counts


def _trial_end(context: Context) -> dict[str, Any]:
    return billing.end_trials(context.conn, context.client)


def _renew(context: Context) -> dict[str, Any]:
    return billing.renew(context.conn, context.client, context.settings)


def _automatic_refunds(context: Context) -> dict[str, Any]:
    return automatic_refunds.send_unsent(context.conn, context.client)


def _audit(context: Context) -> dict[str, Any]:
    return audit.run(context.conn)


def _pay_sellers(context: Context) -> dict[str, Any]:
    return payouts.pay_sellers(context.conn, context.psp, context.settings)


def _settle(context: Context) -> dict[str, Any]:
    since, until = context.options.get("since"), context.options.get("until")
    return settle.run(context.conn, context.psp, context.settings, since=since, until=until)


SWEEPS: tuple[Sweep, ...] = (
    Sweep(
        "reconcile",
        actor="reconcile",
        help="one reconciliation tick now; prints per-phase counts",
        run=_reconcile,
        every="reconcile_interval",
        enabled_by="reconcile_worker_enabled",
        needs_psp=True,
        time_limit=timedelta(hours=1),
    ),
    Sweep(
        "redrive",
        actor="redrive_webhooks",
        help="enqueue again webhook rows still queued after 2 minutes",
        run=_redrive,
        every=timedelta(minutes=1),
    ),
    Sweep(
        "retention",
        command="cleanup",
        actor="cleanup_webhook_log",
        help="one retention sweep of the webhook log now",
        run=_retention,
        every=timedelta(days=1),
        cron="17 3 * * *",  # quiet hours, off the top of the hour
        time_limit=timedelta(hours=1),
    ),
    Sweep(
        "trial_end",
        actor="end_trials",
        help="one trial-end sweep now: trials past their end → pending_payment, invoice, PSP payment",
        run=_trial_end,
        every=timedelta(minutes=5),
        time_limit=timedelta(hours=1),
    ),
    Sweep(
        "renew",
        actor="renew_subscriptions",
        help="one renew sweep now: period-end cancels, renewals, dunning; prints counts",
        run=_renew,
        every=timedelta(minutes=5),
        time_limit=timedelta(hours=1),
    ),
    Sweep(
        "automatic_refunds",
        actor="send_automatic_refunds",
        help="send the automatic refunds not sent yet (the outbox's fallback); prints counts",
        run=_automatic_refunds,
        every=timedelta(minutes=1),
    ),
    Sweep(
        "audit",
        actor="audit_ledger",
        help="check the ledger against itself and every money fact we hold; exit 1 naming what is wrong",
        run=_audit,
        every=timedelta(days=1),
        cron="47 4 * * *",  # after retention, in quiet hours
        verdict=audit.verdict,
        time_limit=timedelta(hours=1),
    ),
    Sweep(
        "pay_sellers",
        actor="pay_sellers",
        help="one payout sweep now: holds past their refund window released, then one payout per seller"
        " and currency of the whole available balance; prints counts",
        run=_pay_sellers,
        every="payout_interval",
        enabled_by="payouts_enabled",
        needs_psp=True,
        time_limit=timedelta(hours=6),  # 100,000 sellers due at once: one PSP call each
    ),
    Sweep(
        "settle",
        command="settle",
        actor="settle",
        help="compare every payment and refund the PSP created in a window (default: the last 3 days)"
        " with ours: apply what our handlers can, open a discrepancy for the rest; prints counts",
        run=_settle,
        every="settle_interval",
        needs_psp=True,
        verdict=settle.verdict,
        time_limit=timedelta(hours=6),
        options=(
            ("since", "ISO 8601 time the window starts at (default: --until minus 3 days)"),
            ("until", "ISO 8601 time the window ends at (default: now)"),
        ),
    ),
)


def enabled(settings: Settings) -> list[Sweep]:
    return [sweep for sweep in SWEEPS if sweep.enabled(settings)]


# -- running one ------------------------------------------------------------------------------------


def run(sweep: Sweep, context: Context) -> dict[str, Any]:
    """Run a sweep now, recorded in sweep_runs: started, finished, its counts or its error.
    Automatic refunds it opened are enqueued once their transactions have committed."""
    with automatic_refunds.enqueue_after_commit(context.conn, _send_refund):
        return _recorded(context.conn, sweep.name, lambda: sweep.run(context))


def _recorded(conn: db.Connection, name: str, sweep: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with conn.transaction():
        row = conn.execute(QUERIES["start_run"], {"name": name}).fetchone()
    assert row is not None
    run_id = row[0]
    try:
        counts = sweep()
    except Exception as exc:
        with conn.transaction():
            conn.execute(
                QUERIES["finish_run"],
                {"id": run_id, "counts": None, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
        raise
    with conn.transaction():
        conn.execute(QUERIES["finish_run"], {"id": run_id, "counts": Jsonb(counts), "error": None})
    return counts


def _send_refund(refund_id: uuid.UUID) -> None:
    from veza_worker import actors  # the broker, only once a sweep opened a refund

    actors.send_one_automatic_refund.send(str(refund_id))


# -- when one is overdue ----------------------------------------------------------------------------


def record_clock_start(conn: db.Connection) -> datetime:
    """Note that a clock started; the first start is kept and returned."""
    with conn.transaction():
        conn.execute(QUERIES["record_clock_start"])
        started = clock_started_at(conn)
    assert started is not None
    return started


def clock_started_at(conn: db.Connection) -> datetime | None:
    row = conn.execute(QUERIES["clock_started_at"]).fetchone()
    return row[0] if row else None


def last_successes(conn: db.Connection, names: list[str]) -> dict[str, datetime | None]:
    return dict(conn.execute(QUERIES["last_successes"], {"names": names}).fetchall())


def overdue(
    every: timedelta, last_success: datetime | None, clock_started: datetime | None, now: datetime
) -> bool:
    """Two intervals past its last success or the clock's first start, whichever is later; before
    any clock has started, nothing is."""
    if clock_started is None:
        return False
    since = clock_started if last_success is None else max(last_success, clock_started)
    return now - since > 2 * every


def status(conn: db.Connection, settings: Settings, now: datetime) -> dict[str, Any]:
    """`{clock_started_at, sweeps: {name: {last_success, overdue}}}` for the sweeps the clock runs."""
    started = clock_started_at(conn)
    running = enabled(settings)
    last = last_successes(conn, [sweep.name for sweep in running])
    return {
        "clock_started_at": started,
        "sweeps": {
            sweep.name: {
                "last_success": last[sweep.name],
                "overdue": overdue(sweep.interval(settings), last[sweep.name], started, now),
            }
            for sweep in running
        },
    }


def gauges(conn: db.Connection, settings: Settings) -> dict[str, Any]:
    """What /metrics exposes: every sweep's last success, the enabled ones' intervals, the clock's
    first start (None: never)."""
    return {
        "last_success": last_successes(conn, [sweep.name for sweep in SWEEPS]),
        "sweep_intervals": {sweep.name: sweep.interval(settings) for sweep in enabled(settings)},
        "clock_started_at": clock_started_at(conn),
    }
