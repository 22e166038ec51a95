"""Upkeep that belongs to no stream entry, beside the stream engine: release scheduled jobs when
their send_at comes, delete ended jobs once FANOUT_RETENTION has passed (so Redis memory does
not grow with history), and forget group members of pods that are gone. Any consumer may do
any of it; the Lua scripts make doing it twice harmless. ``run`` loops each step, logging a
failure and carrying on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.scripts import Scripts
from shared.settings import ConsumerSettings

log = logging.getLogger("fanout.consumer")

_BATCH = 100
_DEFAULT_WINDOW = 8


async def _now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def release_due(redis: Redis, scripts: Scripts, shards: int) -> int:
    """Release every scheduled job whose send_at has come; returns how many."""
    now = await _now_ms(redis)
    released = 0
    for shard in range(shards):
        due = cast(
            list[bytes],
            await redis.zrangebyscore(keys.scheduled(shard), "-inf", now, start=0, num=_BATCH),
        )
        for raw in due:
            k = keys.JobKeys.of(raw.decode())
            done = await scripts.release_due(
                keys=[k.hash, k.backlog, k.work, k.stats, k.scheduled],
                args=[_DEFAULT_WINDOW, k.job_id],
            )
            if done:
                released += 1
                log.info("scheduled job released", extra={"job_id": k.job_id, "shard": shard})
    return released


async def sweep(redis: Redis, scripts: Scripts, shards: int, retention_s: int) -> int:
    """Delete ended jobs older than the retention period; returns how many."""
    cutoff = await _now_ms(redis) - retention_s * 1000
    swept = 0
    for shard in range(shards):
        old = cast(
            list[bytes],
            await redis.zrangebyscore(keys.ended(shard), "-inf", cutoff, start=0, num=_BATCH),
        )
        for raw in old:
            k = keys.JobKeys.of(raw.decode())
            tenant = cast(bytes | None, await redis.hget(k.hash, "tenant"))
            index = keys.tenant_jobs(tenant.decode() if tenant else "", shard)
            await scripts.sweep_job(
                keys=[
                    *(k.hash, k.backlog, k.attempted, k.sent, k.failed, k.indoubt, k.errors),
                    *(k.ended, k.stats, index, k.delivered, k.read),
                    *(k.skipped, k.fallback, k.skips, k.series, k.undelivered),
                ],
                args=[k.job_id],
            )
            swept += 1
    if swept:
        log.info("ended jobs deleted after retention", extra={"jobs": swept})
    return swept


_GONE_AFTER_MS = 3600 * 1000  # a consumer silent this long belonged to a pod that is gone


async def forget_gone_consumers(
    redis: Redis, scripts: Scripts, shards: int, me: str, gone_after_ms: int = _GONE_AFTER_MS
) -> int:
    """Pods come and go with new names: drop group members idle for an hour that hold nothing,
    so XINFO CONSUMERS does not grow with every deploy."""
    forgotten = 0
    for shard in range(shards):
        for stream, group in (
            (keys.work_stream(shard), keys.GROUP),
            (keys.callbacks(shard), keys.CALLBACK_GROUP),
            (keys.inbox(shard), keys.INBOX_GROUP),
        ):
            try:
                members: list[dict[str, Any]] = await redis.xinfo_consumers(stream, group)
            except ResponseError:
                continue  # no stream or group yet
            for member in members:
                raw = member["name"]
                name = raw.decode() if isinstance(raw, bytes) else raw
                if name == me or int(member["pending"]) or int(member["idle"]) < gone_after_ms:
                    continue
                forgotten += int(await scripts.forget_consumer(keys=[stream], args=[group, name]))
    if forgotten:
        log.info("forgot consumers that are gone", extra={"consumers": forgotten})
    return forgotten


async def run(redis: Redis, scripts: Scripts, settings: ConsumerSettings) -> None:
    """Every step on its own period, until cancelled."""
    shards, me = settings.shards, settings.consumer_name
    await asyncio.gather(
        _every(0.5, lambda: release_due(redis, scripts, shards)),
        _every(
            min(60.0, settings.retention_s / 4),
            lambda: sweep(redis, scripts, shards, settings.retention_s),
        ),
        _every(300.0, lambda: forget_gone_consumers(redis, scripts, shards, me)),
    )


async def _every(seconds: float, step: Callable[[], Awaitable[int]]) -> None:
    while True:
        try:
            await step()
        except (RedisError, OSError) as exc:
            log.warning("housekeeping step failed", extra={"error": str(exc)})
        except Exception:
            log.exception("housekeeping step failed")
        await asyncio.sleep(seconds)
