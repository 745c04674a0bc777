"""The naive reference receiver bench/receiver compares ours against: the same work done the plain
way. HMAC-SHA512 verify, one async INSERT per request through a psycopg pool, Dramatiq's `send`
through the thread pool. Not for production: no body cap, no 413/401 rows, no metrics.

    uvicorn --app-dir bench naive_receiver:app
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SECRET = os.environ["HYPERSWITCH_WEBHOOK_SECRET"].encode()
broker = RedisBroker(url=os.environ["REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="webhooks", actor_name="process_webhook")
def process_webhook(log_id: int) -> None:
    """Only sent from here; the real worker defines the same actor."""


INSERT = (
    "INSERT INTO hyperswitch_webhook_log (payload, signature_valid, processing_result, source_ip,"
    " user_agent, request_id, event_type, event_id) VALUES (%s, true, 'queued', %s, %s, %s, NULL, NULL)"
    " RETURNING id"
)


async def webhook(request: Request) -> Response:
    body = await request.body()
    expected = hmac.new(SECRET, body, hashlib.sha512).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-webhook-signature-512", "")):
        return PlainTextResponse("bad signature", status_code=401)
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
    async with pool.connection() as conn:
        cursor = await conn.execute(
            INSERT,
            [
                body.decode(),
                request.client.host if request.client else None,
                request.headers.get("user-agent"),
                request.headers.get("x-request-id"),
            ],
        )
        row = await cursor.fetchone()
    assert row is not None
    await anyio.to_thread.run_sync(process_webhook.send, row[0])
    return JSONResponse({"log_id": row[0]})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=2, max_size=10, open=False)
    await app.state.pool.open()
    yield
    await app.state.pool.close()


app = Starlette(routes=[Route("/webhooks/hyperswitch", webhook, methods=["POST"])], lifespan=lifespan)
