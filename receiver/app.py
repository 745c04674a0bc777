"""The webhook receiver: cap the body, verify, ONE INSERT, enqueue, answer. No business logic."""

from __future__ import annotations

import contextlib
import logging
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

from veza_worker import actors, db, errors, webhooks
from veza_worker.broker import make_broker
from veza_worker.settings import Settings

log = logging.getLogger("receiver")


class PayloadTooLarge(Exception):
    """The body exceeds MAX_WEBHOOK_PAYLOAD_BYTES."""


@dataclass
class State:
    settings: Settings
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    broker: RedisBroker


async def hyperswitch_webhook(request: Request) -> Response:
    state: State = request.app.state.receiver
    try:
        body = await read_capped(request, state.settings.max_webhook_payload_bytes)
    except PayloadTooLarge:
        return PlainTextResponse("payload too large", status_code=413)
    client = request.client.host if request.client else None
    record = webhooks.delivery(body, request.headers, client, state.settings.webhook_secrets)
    try:
        log_id = await record_delivery(state, record)
    except psycopg.Error:  # PoolTimeout too: Hyperswitch retries a 503 for ~24 h
        log.exception("webhook not recorded, answering 503 (request_id=%s)", record.request_id)
        return PlainTextResponse("database unavailable", status_code=503)
    if not record.signature_valid:
        log.warning("webhook log_id=%s has a bad or missing signature", log_id)
        return PlainTextResponse("bad signature", status_code=401)
    await enqueue(state.broker, log_id)
    return JSONResponse({"log_id": log_id})


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


async def record_delivery(state: State, record: webhooks.Delivery) -> int:
    """The audit row's one INSERT. A database error that is not an outage (a value no column or
    index can take) must not cost a 503 that Hyperswitch retries for a day: the row is stored
    again with the unindexed, header-derived fields cut down, the body kept whole."""
    try:
        async with state.pool.connection() as conn:  # commits when the block exits
            return await webhooks.insert_log(conn, record)
    except psycopg.Error as exc:
        if db.is_transient(exc):
            raise
        log.warning(
            "webhook row refused (%s); storing it with its header fields cut down", type(exc).__name__
        )
    async with state.pool.connection() as conn:
        return await webhooks.insert_log(conn, webhooks.cut_down(record))


async def enqueue(broker: RedisBroker, log_id: int) -> None:
    """Send process_webhook(log_id). The committed row is the outbox: a lost send is redriven."""
    message = actors.process_webhook.message(log_id)
    try:
        await anyio.to_thread.run_sync(broker.enqueue, message)
    except Exception:
        log.warning(
            "webhook log_id=%s recorded but not enqueued; the redrive will send it", log_id, exc_info=True
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


def create_app(settings: Settings | None = None) -> Starlette:
    """The receiver; settings come from the environment at start-up unless given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        config = settings or Settings.from_env()
        if not config.webhook_secrets:
            raise errors.ConfigError("HYPERSWITCH_WEBHOOK_SECRET is required by the receiver")
        # open(wait=False): the web dyno starts, and answers 503, while Postgres is down.
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            config.database_url, min_size=2, max_size=10, timeout=5, kwargs={"connect_timeout": 5}, open=False
        )
        await pool.open(wait=False)
        broker = make_broker(config.redis_url, middleware=[])
        app.state.receiver = State(config, pool, broker)
        log.info("receiver ready: %d webhook secret(s)", len(config.webhook_secrets))
        try:
            yield
        finally:
            await pool.close()
            broker.client.close()

    routes = [
        Route("/webhooks/hyperswitch", hyperswitch_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


app = create_app()
