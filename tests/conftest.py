"""Fixtures: a throwaway database per test, a flushed Redis broker, a real worker and uvicorn."""

from __future__ import annotations

import fcntl
import functools
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest

from receiver.app import create_app
from tests import factories
from tests.fake_hyperswitch import FakeHyperswitch, create_fake
from tests.support import OLD_SECRET, PSP_API_KEY, SECRET, TEST_REDIS_URL, ServerThread, admin, row, url_for
from veza_worker import db, hyperswitch, reconcile
from veza_worker.broker import broker as global_broker
from veza_worker.settings import Settings

UNIT = Path(__file__).resolve().parent / "unit"  # tests of pure functions: no Postgres, no Redis


@pytest.fixture(scope="session", autouse=True)
def one_session_per_redis_db(request: pytest.FixtureRequest) -> Iterator[None]:
    """Test sessions on one machine share the tests' Redis database: they take turns, not messages.
    A session of unit tests alone uses neither service, so it takes no turn."""
    if all(UNIT in Path(item.path).parents for item in request.session.items):
        yield
        return
    lock_path = Path(tempfile.gettempdir()) / f"veza-worker-tests-{zlib.crc32(TEST_REDIS_URL.encode())}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"veza_tpl_{uuid.uuid4().hex[:12]}"
    db.migrate(url_for(name))  # the migration runner builds the template, so every test exercises it
    yield name
    admin("DROP DATABASE {} WITH (FORCE)", name)


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    name = f"veza_test_{uuid.uuid4().hex[:12]}"
    admin("CREATE DATABASE {} TEMPLATE {}", name, template_db)
    yield url_for(name)
    admin("DROP DATABASE {} WITH (FORCE)", name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for arranging rows and asserting on them."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=TEST_REDIS_URL, webhook_secrets=(SECRET, OLD_SECRET))


@pytest.fixture(scope="session")
def redis_connections() -> Iterator[None]:
    yield
    global_broker.client.close()  # the pool's sockets, before the interpreter reports them unclosed


@pytest.fixture
def broker(redis_connections: None) -> Iterator[dramatiq.Broker]:
    global_broker.flush_all()
    yield global_broker
    global_broker.flush_all()


@pytest.fixture
def worker(
    broker: dramatiq.Broker, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker on the Redis broker, in this process, against this test's database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    broker.emit_after("process_boot")  # what the dramatiq CLI does in each worker process
    started = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def monthly(conn: psycopg.Connection[Any]) -> uuid.UUID:
    """A monthly plan of 9.99 EUR, no trial."""
    return factories.make_plan(conn, 999)


@pytest.fixture
def psp() -> Iterator[tuple[str, FakeHyperswitch]]:
    """The fake Hyperswitch on a real uvicorn: (base URL, its state)."""
    app = create_fake(PSP_API_KEY)
    with ServerThread(app) as server:
        yield server.url, app.state.fake
    assert app.state.fake.violations == []  # every request we sent was valid per the spec


@pytest.fixture
def fake(psp: tuple[str, FakeHyperswitch]) -> FakeHyperswitch:
    return psp[1]


@pytest.fixture
def psp_settings(settings: Settings, psp: tuple[str, FakeHyperswitch]) -> Settings:
    return replace(
        settings, hyperswitch_enabled=True, hyperswitch_url=psp[0], hyperswitch_api_key=PSP_API_KEY
    )


@pytest.fixture
def client(psp: tuple[str, FakeHyperswitch]) -> Iterator[hyperswitch.Client]:
    psp_client = hyperswitch.Client(psp[0], PSP_API_KEY)
    yield psp_client
    psp_client.close()


@pytest.fixture
def tick(conn: psycopg.Connection[Any], client: hyperswitch.Client, psp_settings: Settings) -> factories.Tick:
    """`tick(**overrides)`: one reconciler tick against the fake PSP, with those settings changed;
    its per-phase counts."""

    def run(**overrides: Any) -> dict[str, dict[str, Any]]:
        return reconcile.tick(conn, client, replace(psp_settings, **overrides))

    return run


@pytest.fixture
def paid_invoice(
    conn: psycopg.Connection[Any], client: hyperswitch.Client, fake: FakeHyperswitch, settings: Settings
) -> dict[str, Any]:
    """An active subscription's first invoice, paid (9.99 EUR): its id and payment_id."""
    factories.paid_up(conn, client, fake, settings, factories.make_plan(conn, 999))
    return row(conn, "SELECT id, payment_id FROM subscription_invoices WHERE status = 'paid'")


@pytest.fixture
def own_connections(database_url: str, psp: tuple[str, FakeHyperswitch]) -> factories.OwnConnections:
    """For a thread standing in for another process: `with own_connections() as (conn, client):`."""
    return functools.partial(factories.own_connections, database_url, psp[0])


@pytest.fixture
def receiver(settings: Settings) -> Iterator[str]:
    """The receiver's base URL, served by a real uvicorn."""
    with ServerThread(create_app(settings)) as server:
        yield server.url
