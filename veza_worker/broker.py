"""The Dramatiq broker, and the resources a worker process opens at boot.

The only module that reads the environment at import: Dramatiq binds actors to the broker
when their module is imported, so the broker must exist, on REDIS_URL, by then.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import dramatiq
import redis
import redis.asyncio
from dramatiq.brokers import redis as dramatiq_redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.middleware.prometheus import Prometheus
from psycopg_pool import ConnectionPool

from veza_worker import db, hyperswitch, logs
from veza_worker.settings import Settings

log = logging.getLogger(__name__)


def make_broker(redis_url: str, *, middleware: list[Middleware] | None = None) -> RedisBroker:
    """A Redis broker whose calls fail within seconds when Redis is down, instead of hanging."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
    return RedisBroker(client=client, middleware=middleware)  # type: ignore[no-untyped-call]


class AsyncEnqueuer:
    """Dramatiq's RedisBroker.enqueue, on redis.asyncio: the receiver sends without a thread hop.

    The same message (Dramatiq's encoding, a fresh `redis_message_id`) through the same Lua
    dispatch script with the same arguments, so a worker cannot tell the difference (polar does the
    same: server/polar/worker/_enqueue.py). No broker middleware runs: the receiver has none.
    """

    def __init__(self, broker: RedisBroker, redis_url: str) -> None:
        self.broker = broker
        self.client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
        self._dispatch = self.client.register_script(dramatiq_redis._scripts["dispatch"])
        self._unpack_size: int | None = None

    async def enqueue(self, messages: list[dramatiq.Message[Any]]) -> None:
        """Send messages in one round trip: each its own dispatch call, pipelined (no MULTI)."""
        if self._unpack_size is None:  # what the broker computes once, by a script of its own
            self._unpack_size = await anyio.to_thread.run_sync(self.broker._max_unpack_size)
        async with self.client.pipeline(transaction=False) as pipe:
            for message in messages:
                message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
                args = [
                    "enqueue",
                    int(time.time() * 1000),
                    message.queue_name,
                    self.broker.broker_id,
                    self.broker.heartbeat_timeout,
                    self.broker.dead_message_ttl,
                    0,  # maintenance is the workers' job
                    self._unpack_size,
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                await self._dispatch(keys=[self.broker.namespace], args=args, client=pipe)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class Resources(Middleware):
    """Settings and a Postgres pool, opened when a worker process boots."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._pool: ConnectionPool[db.Connection] | None = None
        self._client: hyperswitch.Client | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def pool(self) -> ConnectionPool[db.Connection]:
        if self._pool is None:
            raise RuntimeError("the worker's Postgres pool is not open: no worker has booted")
        return self._pool

    @property
    def client(self) -> hyperswitch.Client | None:
        """The PSP client, or None when no provider is configured."""
        return self._client

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._settings = Settings.from_env()
        self._pool = db.make_pool(self._settings.database_url, max_size=worker.worker_threads + 1)
        self._client = hyperswitch.from_settings(self._settings)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            self._client.close()
        self._pool = self._settings = self._client = None


resources = Resources()
# Fail fast: a bad variable stops every process that imports the actors (worker, web, clock) at
# start-up, with the variable named, instead of failing on the first message.
_settings = Settings.from_env()
logs.configure(_settings.log_format)  # every process that imports the actors: worker and clock
broker = make_broker(_settings.redis_url)
broker.add_middleware(CurrentMessage())
# Dramatiq's own metrics (messages, errors, durations) on dramatiq_prom_port (9191), served by a
# fork of the main process from the processes' shared directory; ours land in the same one.
broker.add_middleware(Prometheus())
broker.add_middleware(resources)
dramatiq.set_broker(broker)
