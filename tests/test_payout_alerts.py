"""The payout alerts of ops/alerts.yml, by promtool's own unit tests (tests/payout_alerts_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def rules() -> dict[str, dict[str, str]]:
    document = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def test_a_failed_or_returned_payout_and_money_in_transit_for_3_days_alert() -> None:
    found = rules()
    assert found["VezaPayoutFailed"]["expr"] == "veza_payouts_failed_last_day > 0"
    assert found["VezaPayoutInTransitTooLong"]["expr"] == "veza_payouts_oldest_in_transit_seconds > 3 * 86400"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)"
)
def test_promtool_runs_the_payout_alerts_unit_tests() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", str(ROOT / "tests" / "payout_alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
