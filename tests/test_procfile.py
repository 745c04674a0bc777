"""The Procfile's own commands, run as the processes a Procfile runner starts: release, web, worker."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import (
    SAMPLES,
    TEST_REDIS_URL,
    admin,
    log_rows,
    make_order,
    post_webhook,
    row,
    url_for,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(process_type: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One Procfile line, through a shell as honcho or Heroku runs it, in its own process group."""
    return subprocess.Popen(
        ["bash", "-c", PROCFILE[process_type].strip()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the process the line started (bash execs it), as a dyno manager stops it."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing of the test outlives it


@pytest.fixture
def env(broker: Any) -> Iterator[dict[str, str]]:
    """A fresh database no migration has touched, and the tests' Redis."""
    name = f"veza_procfile_{uuid.uuid4().hex[:12]}"
    yield {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABASE_URL": url_for(name),
        "REDIS_URL": TEST_REDIS_URL,
        "HYPERSWITCH_WEBHOOK_SECRET": "procfile_secret",
        "PORT": str(free_port()),
        "WORKER_PROCESSES": "1",
        "WORKER_THREADS": "2",
    }
    admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def test_release_web_and_worker_take_a_signed_payment_to_a_completed_order(env: dict[str, str]) -> None:
    release = subprocess.run(
        ["bash", "-c", PROCFILE["release"].strip()], cwd=ROOT, env=env, capture_output=True
    )
    assert release.returncode == 0, release.stderr

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        paid = SAMPLES / "payment_succeeded.json"
        payment_id = "pay_Vt4nB8sK2qLw9ZxR3mYc"
        order_id = make_order(conn, [(uuid.uuid4(), 4599)], payment_id=payment_id)
        web, worker = start("web", env), start("worker", env)
        try:
            base = f"http://127.0.0.1:{env['PORT']}"
            wait_for(lambda: _ready(base), timeout=30)
            response = post_webhook(base, paid.read_bytes(), secret="procfile_secret")
            assert response.status_code == 200
            wait_for(lambda: log_rows(conn)[0]["processing_result"] != "queued", timeout=30)
        finally:
            codes = stop(web), stop(worker)

        assert log_rows(conn)[0]["processing_result"] == "ok"
        assert row(conn, "SELECT status FROM orders WHERE id = %s", order_id)["status"] == "completed"
    # Both stop on SIGTERM; uvicorn re-raises the signal once its graceful shutdown is done.
    assert codes in {(0, 0), (-signal.SIGTERM, 0)}


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        time.sleep(0.1)
        return False
