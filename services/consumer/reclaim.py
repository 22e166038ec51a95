"""Upkeep beside the reader: renew the leases of held chunks, take over idle ones.

A held chunk renews its lease (XCLAIM ... JUSTID to itself, owner-checked in Lua) every third
of ``FANOUT_CLAIM_IDLE_MS``, so a slow chunk is never stolen; an entry idle past it belonged
to a consumer that died, and XAUTOCLAIM hands it to us with its delivery count, past
``FANOUT_MAX_DELIVERIES`` of which it goes to the dead stream. Each loop logs and carries on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from services.consumer import housekeeping
from shared import keys, metrics

if TYPE_CHECKING:
    from services.consumer.worker import Consumer

log = logging.getLogger("fanout.consumer")


class Upkeep:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.lease_every_s = consumer.settings.claim_idle_ms / 3000
        self.reclaim_every_s = max(0.2, consumer.settings.claim_idle_ms / 2000)

    async def run(self) -> None:
        await asyncio.gather(
            self._every(self.lease_every_s, self.renew),
            self._every(self.reclaim_every_s, self.reclaim),
            self._every(0.5, self.release_due),
            self._every(min(60.0, self.consumer.settings.retention_s / 4), self.sweep),
            self._every(300.0, self.forget_gone_consumers),
        )

    async def forget_gone_consumers(self) -> None:
        c = self.consumer
        await housekeeping.forget_gone_consumers(c.redis, c.scripts, c.settings.shards, c.name)

    async def release_due(self) -> None:
        c = self.consumer
        await housekeeping.release_due(c.redis, c.scripts, c.settings.shards)

    async def sweep(self) -> None:
        c = self.consumer
        await housekeeping.sweep(c.redis, c.scripts, c.settings.shards, c.settings.retention_s)

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except (RedisError, OSError) as exc:
                log.warning("upkeep step failed", extra={"step": step.__name__, "error": str(exc)})
            except Exception:
                log.exception("upkeep step failed", extra={"step": step.__name__})
            await asyncio.sleep(seconds)

    async def renew(self) -> None:
        c = self.consumer
        by_shard: dict[int, list[bytes]] = {}
        for held in list(c.held.values()):
            by_shard.setdefault(held.shard, []).append(held.entry_id)
        for shard, ids in by_shard.items():
            lost = await c.scripts.lease(
                keys=[keys.work_stream(shard)], args=[keys.GROUP, c.name, 0, *ids]
            )
            # An entry finished since the snapshot is not lost; one still held is.
            stolen = [entry for entry in lost if (shard, entry) in c.held]
            if stolen:
                log.warning("lease lost", extra={"shard": shard, "entries": len(stolen)})

    async def reclaim(self) -> None:
        c = self.consumer
        if c.stopping.is_set():
            return
        for stream, shard in c.streams.items():
            cursor: bytes | str = "0-0"
            while True:
                room = c.room_for()
                if room == 0:
                    return
                next_cursor, entries, deleted = await c.scripts.reclaim(
                    keys=[stream],
                    args=[keys.GROUP, c.name, c.settings.claim_idle_ms, cursor, room],
                )
                if deleted:
                    metrics.CHUNKS_LOST.inc(len(deleted))
                    log.error(
                        "pending entries were deleted from the stream",
                        extra={"shard": shard, "entries": [d.decode() for d in deleted]},
                    )
                for entry_id, flat, deliveries in entries:
                    fields = dict(zip(flat[::2], flat[1::2], strict=True))
                    metrics.CHUNKS_RECLAIMED.inc()
                    log.info(
                        "chunk reclaimed",
                        extra={
                            "shard": shard,
                            "entry": entry_id.decode(),
                            "deliveries": deliveries,
                        },
                    )
                    c.take(shard, entry_id, fields, int(deliveries))
                cursor = next_cursor
                if cursor in (b"0-0", "0-0"):
                    break
