"""``fanout consumer``: wire settings, logs, signals and the probe server around a Consumer."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from services.consumer import events, health
from services.consumer.callbacks import CallbackSender
from services.consumer.worker import Consumer
from shared.redisconn import open_redis
from shared.settings import ConsumerSettings

log = logging.getLogger("fanout.consumer")


async def serve(settings: ConsumerSettings, probe_socket: socket.socket) -> None:
    """``probe_socket`` comes from ``health.bind``, bound before anything else started."""
    warning = settings.rate_warning()
    if warning:
        log.warning(warning)
    redis = await open_redis(settings.redis_url, settings.redis_cluster)
    consumer = Consumer(settings, redis)
    inbox = events.engine(
        redis,
        consumer.scripts,
        settings.consumer_name,
        shards=settings.shards,
        claim_idle_ms=settings.claim_idle_ms,
        block_ms=settings.block_ms,
        drain_s=settings.drain_s,
        keep_s=settings.retention_s,
        max_deliveries=settings.max_deliveries,
    )

    def stop() -> None:
        consumer.stop()
        inbox.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    probes = await health.start(consumer, probe_socket)
    callbacks = CallbackSender(redis, settings)
    callbacks_task = asyncio.create_task(callbacks.run())
    inbox_task = asyncio.create_task(inbox.run())
    try:
        await consumer.run()
    finally:
        inbox.stop()  # drains beside the chunks: events are short
        await asyncio.gather(inbox_task, return_exceptions=True)
        # After the drain: callbacks of jobs the drain just finished are already queued.
        callbacks_task.cancel()
        await asyncio.gather(callbacks_task, return_exceptions=True)
        await callbacks.close()
        probes.close()
        await redis.aclose()
