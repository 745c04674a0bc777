"""The webhook receiver: cap the body, verify, ONE INSERT, enqueue, answer. No business logic."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import console.app
from veza_worker import actors, db, errors, logs, metrics, ops, webhooks
from veza_worker.broker import AsyncEnqueuer, make_broker
from veza_worker.settings import Settings

log = logging.getLogger("receiver")


class PayloadTooLarge(Exception):
    """The body exceeds MAX_WEBHOOK_PAYLOAD_BYTES."""


@dataclass
class State:
    settings: Settings
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    broker: RedisBroker
    limiter: InvalidSignatureLimiter
    gauges: GaugeCache
    enqueuer: AsyncEnqueuer
    group_commit: GroupCommit


async def hyperswitch_webhook(request: Request) -> Response:
    started = time.perf_counter()
    response, outcome = await _receive(request)
    metrics.delivery(outcome, time.perf_counter() - started)
    return response


async def _receive(request: Request) -> tuple[Response, str]:
    state: State = request.app.state.receiver
    try:
        body = await read_capped(request, state.settings.max_webhook_payload_bytes)
    except PayloadTooLarge:
        return PlainTextResponse("payload too large", status_code=413), "too_large"
    client = request.client.host if request.client else None
    record = webhooks.delivery(body, request.headers, client, state.settings.webhook_secrets)
    try:
        if not record.signature_valid and await state.limiter.suppressed(state.pool, record.source_ip):
            return PlainTextResponse("bad signature", status_code=401), "signature_invalid"
        log_id = await record_delivery(state, record)
    except psycopg.Error:  # PoolTimeout too: Hyperswitch retries a 503 for ~24 h
        log.exception("webhook not recorded, answering 503 (request_id=%s)", record.request_id)
        return PlainTextResponse("database unavailable", status_code=503), "db_unavailable"
    if not record.signature_valid:
        state.limiter.stored(record.source_ip, log_id)
        log.warning("webhook log_id=%s has a bad or missing signature", log_id)
        return PlainTextResponse("bad signature", status_code=401), "signature_invalid"
    return JSONResponse({"log_id": log_id}), "accepted"  # committed, and enqueued (or redriven)


class InvalidSignatureLimiter:
    """At most `per_minute` invalid-signature rows per source address per minute (per web
    process); past it a forged delivery still gets 401, and is counted in the address's last
    stored row of that minute (`suppressed_count`) instead of stored. Valid ones are never limited."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._minute = 0
        self._rows: dict[str | None, tuple[int, int]] = {}  # address → (rows stored, last row's id)

    def _roll(self) -> None:
        minute = int(time.time() // 60)
        if minute != self._minute:
            self._minute, self._rows = minute, {}

    def stored(self, address: str | None, log_id: int) -> None:
        self._roll()
        count, _ = self._rows.get(address, (0, 0))
        self._rows[address] = (count + 1, log_id)

    async def suppressed(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], address: str | None
    ) -> bool:
        self._roll()
        count, last_id = self._rows.get(address, (0, 0))
        if count < self.per_minute:
            return False
        async with pool.connection() as conn:
            await webhooks.count_suppressed(conn, last_id)
        return True


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format. With METRICS_TOKEN set, only `Authorization: Bearer <token>`."""
    state: State = request.app.state.receiver
    token = state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode()):
            return PlainTextResponse("unauthorized", status_code=401)
    try:
        gauges = await state.gauges.read(state.settings)
    except psycopg.Error as exc:
        log.warning("metrics: gauges unavailable: %s", type(exc).__name__)
        return PlainTextResponse("database unavailable", status_code=503)
    return Response(metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")


class GaugeCache:
    """The Postgres-read gauges, read at most every few seconds per process."""

    TTL_SECONDS = 5.0

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None
        self._read_at = 0.0
        self._lock = anyio.Lock()

    async def read(self, settings: Settings) -> dict[str, Any]:
        async with self._lock:
            if self._values is None or time.monotonic() - self._read_at > self.TTL_SECONDS:
                self._values = await anyio.to_thread.run_sync(_read_gauges, settings)
                self._read_at = time.monotonic()
            return self._values


def _read_gauges(settings: Settings) -> dict[str, Any]:
    with db.connect(settings.database_url) as conn:
        return ops.gauges(conn, settings)


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read while it streams and refused past `limit` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class GroupCommit:
    """Concurrent deliveries share one INSERT, one commit and one enqueue; each is answered after.

    Requests queue their row; a few writer tasks each take what is queued (up to MAX_BATCH), write
    it in one transaction and, once it is committed, send the valid rows' messages to Redis in one
    round trip. Under load that is one round trip to each and one WAL flush for many deliveries;
    alone, a delivery waits for nobody. A batch that fails for a reason other than an outage is
    written again row by row, so one bad row never costs the others.
    """

    MAX_BATCH = 64
    WRITERS = 4

    def __init__(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], enqueuer: AsyncEnqueuer
    ) -> None:
        self.pool = pool
        self.enqueuer = enqueuer
        self._queue: list[tuple[webhooks.Delivery, asyncio.Future[int]]] = []
        self._ready = asyncio.Condition()

    async def insert(self, record: webhooks.Delivery) -> int:
        written: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with self._ready:
            self._queue.append((record, written))
            self._ready.notify()
        return await written

    async def run(self) -> None:
        async with anyio.create_task_group() as writers:
            for _ in range(self.WRITERS):
                writers.start_soon(self._writer)

    async def _writer(self) -> None:
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: bool(self._queue))
                batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
            await self._write(batch)

    async def _write(self, batch: list[tuple[webhooks.Delivery, asyncio.Future[int]]]) -> None:
        try:
            async with self.pool.connection() as conn:  # one statement, committed when it returns
                ids = await webhooks.insert_logs(conn, [record for record, _ in batch])
        except psycopg.Error as exc:
            if db.is_transient(exc) or len(batch) == 1:
                for _, written in batch:
                    written.set_exception(exc)
                return
            stored: list[tuple[webhooks.Delivery, asyncio.Future[int], int]] = []
            for record, written in batch:  # one refused row: every other one still gets in
                try:
                    stored.append((record, written, await self._one(record)))
                except psycopg.Error as single:
                    written.set_exception(single)
        else:
            stored = [(record, written, log_id) for (record, written), log_id in zip(batch, ids, strict=True)]
        await enqueue(self.enqueuer, [(record, log_id) for record, _, log_id in stored])
        for _, written, log_id in stored:
            written.set_result(log_id)

    async def _one(self, record: webhooks.Delivery) -> int:
        async with self.pool.connection() as conn:
            return await webhooks.insert_log(conn, record)


async def record_delivery(state: State, record: webhooks.Delivery) -> int:
    """The audit row, committed. A database error that is not an outage (a value no column or
    index can take) must not cost a 503 that Hyperswitch retries for a day: the row is stored
    again with the unindexed, header-derived fields cut down, the body kept whole."""
    try:
        return await state.group_commit.insert(record)
    except psycopg.Error as exc:
        if db.is_transient(exc):
            raise
        log.warning(
            "webhook row refused (%s); storing it with its header fields cut down", type(exc).__name__
        )
    async with state.pool.connection() as conn:
        log_id = await webhooks.insert_log(conn, webhooks.cut_down(record))
    await enqueue(state.enqueuer, [(record, log_id)])
    return log_id


async def enqueue(enqueuer: AsyncEnqueuer, committed: list[tuple[webhooks.Delivery, int]]) -> None:
    """Send process_webhook for the committed rows whose signature is valid, in one round trip.
    The rows are the outbox: a lost send is redriven."""
    log_ids = [log_id for record, log_id in committed if record.signature_valid]
    if not log_ids:
        return
    try:
        await enqueuer.enqueue([actors.process_webhook.message(log_id) for log_id in log_ids])
    except Exception:
        log.warning(
            "webhook log_id=%s recorded but not enqueued; the redrive will send it",
            ",".join(map(str, log_ids)),
            exc_info=True,
        )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: State = request.app.state.receiver
    checks = {"postgres": await _postgres_ready(state), "redis": await _redis_ready(state)}
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(checks, status_code=200 if ready else 503)


async def _postgres_ready(state: State) -> str:
    try:
        async with state.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def _redis_ready(state: State) -> str:
    try:
        await anyio.to_thread.run_sync(state.broker.client.ping)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@contextlib.asynccontextmanager
async def ops_console(app: Starlette, config: Settings) -> AsyncIterator[None]:
    """The ops console at /ops, after the receiver's own routes, only when OPS_USERS is set: without
    it /ops is 404. Its middleware wraps the console alone, never the webhook route."""
    if not config.ops_users:
        yield
        return
    async with console.app.mounted(config) as mount:
        app.router.routes.append(mount)
        log.info("ops console at /ops: %d user(s)", len(config.ops_users))
        try:
            yield
        finally:
            app.router.routes.remove(mount)


def create_app(settings: Settings | None = None) -> Starlette:
    """The receiver; settings come from the environment at start-up unless given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        config = settings or Settings.from_env()
        if not config.webhook_secrets:
            raise errors.ConfigError("HYPERSWITCH_WEBHOOK_SECRET is required by the receiver")
        config.check_ops()
        logs.configure(config.log_format)
        metrics.use_web_directory()
        if config.metrics_token is None:
            log.warning("METRICS_TOKEN is not set: /metrics answers anyone who reaches this process")
        # open(wait=False): the web dyno starts, and answers 503, while Postgres is down.
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            config.database_url,
            min_size=2,
            max_size=10,
            timeout=5,
            # autocommit: every statement the receiver runs is one statement, its own transaction,
            # committed (and flushed) when it returns: one round trip, not BEGIN, it, COMMIT.
            kwargs={"connect_timeout": 5, "prepare_threshold": db.NEVER_PREPARE, "autocommit": True},
            open=False,
        )
        await pool.open(wait=False)
        broker = make_broker(config.redis_url, middleware=[])
        limiter = InvalidSignatureLimiter(config.invalid_signature_rows_per_minute)
        enqueuer = AsyncEnqueuer(broker, config.redis_url)
        group_commit = GroupCommit(pool, enqueuer)
        app.state.receiver = State(config, pool, broker, limiter, GaugeCache(), enqueuer, group_commit)
        log.info("receiver ready: %d webhook secret(s)", len(config.webhook_secrets))
        try:
            async with ops_console(app, config), anyio.create_task_group() as writers:
                writers.start_soon(group_commit.run)
                yield
                writers.cancel_scope.cancel()
        finally:
            await pool.close()
            await enqueuer.close()
            broker.client.close()

    routes = [
        Route("/webhooks/hyperswitch", hyperswitch_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


app = create_app()
