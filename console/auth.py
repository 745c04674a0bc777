"""Who gets into the console: OPS_USERS' argon2 hashes, a login limit kept in Postgres, CSRF tokens.

The session itself is Starlette's signed cookie (itsdangerous); it carries the user's name and the
CSRF token every form posts back. The limit lives in Postgres so that every web process, and
every dyno, counts the same failures.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import anyio
import argon2

from veza_worker import db

log = logging.getLogger(__name__)
QUERIES = db.load_queries(__name__)

MAX_FAILURES = 5  # failed logins for one (user, address) ...
FAILURE_WINDOW = timedelta(minutes=15)  # ... within this window lock the pair ...
LOCKOUT = timedelta(minutes=15)  # ... for this long (DESIGN.md, Round-3 clarifications)
FAILURE_DELAY_SECONDS = 1.0  # every failed login is answered this late: guessing is slow
MAX_NAME_CHARS = 64


class Users:
    """OPS_USERS, and a verifier whose cost does not depend on whether the name exists."""

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        self._hashes = dict(users)
        self._hasher = argon2.PasswordHasher()
        # An unknown name is checked against a hash too, so its answer takes as long as a known one's.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        # argon2 takes 64 MiB and ~50 ms per check: a burst of logins queues here, not in memory.
        self._limiter = anyio.CapacityLimiter(2)

    def __contains__(self, name: object) -> bool:
        return name in self._hashes

    async def verify(self, name: str, password: str) -> bool:
        stored = self._hashes.get(name, self._decoy)
        ok = await anyio.to_thread.run_sync(self._check, stored, password, limiter=self._limiter)
        return ok and name in self._hashes

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            log.error("OPS_USERS holds a hash argon2 cannot read")
            return False


def login_key(name: str, address: str | None) -> dict[str, Any]:
    """The (user, address) pair the limit counts; a name is cut short so no input grows a row."""
    return {"username": name[:MAX_NAME_CHARS], "address": address or "unknown"}


def locked_until(conn: db.Connection, name: str, address: str | None) -> datetime | None:
    """When the pair may try again, or None when it may try now."""
    with conn.transaction():
        row = conn.execute(QUERIES["locked_until"], login_key(name, address)).fetchone()
    until: datetime | None = None if row is None else row[0]
    return until


def record_failure(conn: db.Connection, name: str, address: str | None) -> datetime | None:
    """Count a failed login; returns when the pair is locked until, if this failure locked it."""
    params = {**login_key(name, address), "window": FAILURE_WINDOW, "max": MAX_FAILURES, "lockout": LOCKOUT}
    with conn.transaction():
        row = conn.execute(QUERIES["record_failure"], params).fetchone()
        conn.execute(QUERIES["prune_failures"])
    assert row is not None
    until: datetime | None = row[0]
    return until


def clear_failures(conn: db.Connection, name: str, address: str | None) -> None:
    with conn.transaction():
        conn.execute(QUERIES["clear_failures"], login_key(name, address))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session: dict[str, Any], posted: object) -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not isinstance(posted, str) or not posted:
        return False
    return hmac.compare_digest(expected.encode(), posted.encode("utf-8", "replace"))
