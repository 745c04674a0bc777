"""Prometheus metrics, multiprocess-safe: several uvicorn workers or Dramatiq processes add up.

prometheus_client picks its storage (in memory, or files in PROMETHEUS_MULTIPROC_DIR shared by a
process group) when it is first imported, so it is imported on the first metric, after the
process has set that directory: the receiver's lifespan does for the web, Dramatiq's Prometheus
middleware at process boot for the worker. A one-shot CLI keeps its counts in memory.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from functools import cache
from multiprocessing import parent_process
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


_BUILDING = threading.Lock()


def _collectors() -> dict[str, Any]:
    """Built once, under a lock: threads (a worker's, the payout sweep's lanes) may record their
    first metric at the same moment, and a second registration would raise."""
    with _BUILDING:
        return _build()


@cache
def _build() -> dict[str, Any]:
    import prometheus_client as prom

    return {
        "deliveries": prom.Counter(
            "veza_webhook_deliveries_total", "Webhook POSTs by how the receiver answered them.", ["outcome"]
        ),
        "request_seconds": prom.Histogram(
            "veza_webhook_request_seconds", "Time to answer a webhook POST.", buckets=LATENCY_BUCKETS
        ),
        "results": prom.Counter(
            "veza_webhook_results_total", "Deliveries applied by the worker, by final result.", ["result"]
        ),
        "psp_requests": prom.Counter(
            "veza_psp_requests_total",
            "Calls to Hyperswitch by endpoint and outcome.",
            ["endpoint", "outcome"],
        ),
        "psp_seconds": prom.Histogram(
            "veza_psp_request_seconds",
            "Time of a call to Hyperswitch.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        "reconcile_actions": prom.Counter(
            "veza_reconcile_actions_total", "What the reconciler did, per phase.", ["phase", "action"]
        ),
        "payouts": _payouts(prom),
    }


PAYOUT_STATUSES = ("pending", "paid", "failed", "reversed")


def _payouts(prom: Any) -> Any:
    """Every status's series exists from the start at 0: an alert or a panel never sees it absent."""
    counter = prom.Counter(
        "veza_payouts_total", "Payouts entering each status (pending = created).", ["status"]
    )
    for status in PAYOUT_STATUSES:
        counter.labels(status)
    return counter


def delivery(outcome: str, seconds: float) -> None:
    """outcome: accepted | signature_invalid | too_large | db_unavailable."""
    _collectors()["deliveries"].labels(outcome).inc()
    _collectors()["request_seconds"].observe(seconds)


def webhook_result(result: str | None) -> None:
    """ok | skipped | error: the class of a delivery's final processing_result."""
    if result is None or result == "queued":
        return
    _collectors()["results"].labels(result.split(":")[0]).inc()


def psp_request(endpoint: str, outcome: str, seconds: float) -> None:
    _collectors()["psp_requests"].labels(endpoint, outcome).inc()
    _collectors()["psp_seconds"].labels(endpoint).observe(seconds)


def reconcile_action(phase: str, action: str) -> None:
    _collectors()["reconcile_actions"].labels(phase, action).inc()


def payout(status: str) -> None:
    """A payout entered `status`: pending (created), paid, failed or reversed."""
    _collectors()["payouts"].labels(status).inc()


# -- the web's /metrics -----------------------------------------------------------------------------


def use_web_directory() -> str:
    """The multiprocess directory of this web server: shared by the uvicorn workers of one
    supervisor (their parent), its own for a single process. Set before the first metric."""
    root = parent_process()
    owner = root.pid if root is not None else os.getpid()
    directory = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"veza-web-metrics-{owner}")
    )
    os.makedirs(directory, exist_ok=True)
    return directory


def render(gauges: Mapping[str, Any]) -> bytes:
    """The text exposition: this process group's counters and histograms, then the gauges read
    from Postgres for this scrape."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    _collectors()
    counters = prom.CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        counters = prom.REGISTRY
    return prom.generate_latest(counters) + prom.generate_latest(_gauge_registry(gauges))


def _gauge_registry(values: Mapping[str, Any]) -> Any:
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Gauges(values))
    return registry


class _Gauges:
    """The Postgres-read gauges of one scrape, as a prometheus_client custom collector."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily as Gauge

        values = self.values
        yield Gauge("veza_outbox_queued", "Audit rows waiting for a worker.", value=values["outbox_queued"])
        yield Gauge(
            "veza_outbox_oldest_queued_seconds",
            "Age of the oldest audit row waiting for a worker.",
            value=values["outbox_oldest_queued_seconds"],
        )
        stuck = Gauge("veza_stuck_rows", "Rows a reconciler phase would take up now.", labels=["phase"])
        for phase, count in values["stuck"].items():
            stuck.add_metric([phase], count)
        yield stuck
        yield Gauge("veza_needs_human", "Rows automation left to a person.", value=values["needs_human"])
        subscriptions = Gauge("veza_subscriptions", "Subscriptions by status.", labels=["status"])
        for status, count in values["subscriptions"].items():
            subscriptions.add_metric([status], count)
        yield subscriptions
        yield Gauge("veza_disputes_open", "Disputes not closed yet.", value=values["disputes_open"])
        if values["ledger_violations"] is not None:  # absent until the first audit sweep
            yield Gauge(
                "veza_ledger_violations",
                "What the last ledger audit found wrong (veza-worker audit).",
                value=values["ledger_violations"],
            )
        nearest = values["dispute_nearest_deadline"]
        yield Gauge(
            "veza_dispute_nearest_deadline_timestamp_seconds",
            "The nearest challenge_required_by of an open dispute (0: none).",
            value=nearest.timestamp() if nearest else 0,
        )
        last = Gauge(
            "veza_sweep_last_success_timestamp_seconds",
            "When each sweep last finished without error (0: never).",
            labels=["sweep"],
        )
        for sweep, when in values["last_success"].items():
            last.add_metric([sweep], when.timestamp() if when else 0)
        yield last
        intervals = Gauge(
            "veza_sweep_interval_seconds",
            "How often the clock runs each enabled sweep; one is overdue after twice this.",
            labels=["sweep"],
        )
        for sweep, every in values["sweep_intervals"].items():
            intervals.add_metric([sweep], every.total_seconds())
        yield intervals
        yield from _payout_gauges(values["payouts"])
        started = values["clock_started_at"]
        if started is not None:  # absent until a clock starts: the alert on absent() fires
            yield Gauge(
                "veza_clock_started_timestamp_seconds",
                "When a clock first started; sweeps are overdue two intervals after it at the earliest.",
                value=started.timestamp(),
            )


def _payout_gauges(values: Mapping[str, Any]) -> Any:
    from prometheus_client.core import GaugeMetricFamily as Gauge

    in_transit = Gauge(
        "veza_payouts_in_transit", "Money in payouts not final yet (minor units).", labels=["currency"]
    )
    for currency, amount in values["in_transit"].items():
        in_transit.add_metric([currency], amount)
    yield in_transit
    yield Gauge(
        "veza_payouts_oldest_in_transit_seconds",
        "Age of the oldest payout not final yet (0: none).",
        value=values["oldest_in_transit_seconds"],
    )
    yield Gauge(
        "veza_payouts_failed_last_day",
        "Payouts that failed or that the bank returned in the last 24 hours.",
        value=values["failed_last_day"],
    )
    yield Gauge(
        "veza_sellers_without_payout_method",
        "Sellers with money to pay that the last pay_sellers sweep could not pay: no payout method.",
        value=values["sellers_without_payout_method"],
    )
