"""Tests of pure functions: no Postgres, no Redis, no server; `pytest tests/unit` runs anywhere."""
