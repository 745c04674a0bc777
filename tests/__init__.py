"""The tests' Redis database, set before any test module imports veza_worker.broker,
which binds the actors to REDIS_URL at import."""

from __future__ import annotations

import os
import tempfile

# Dramatiq's Prometheus middleware reads its directory at import: this session's own, not /tmp's.
os.environ.setdefault("dramatiq_prom_db", tempfile.mkdtemp(prefix="veza-test-dramatiq-prom-"))
os.environ["REDIS_URL"] = os.environ.get("VEZA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
