"""The consumer: read chunks, deliver them, record them; take over what dead consumers left.

run()
  ├── reader: XREADGROUP (BLOCK) on every shard's work stream, only while the chunks it
  │           holds leave room for more recipients than ``concurrency`` (no hoarding)
  ├── one task per chunk: begin (ledger) -> senders -> finish (ledger, ack, release next)
  ├── upkeep: renew the leases of held chunks; XAUTOCLAIM idle ones (reclaim.py)
  └── stop(): stop reading, let held chunks finish until the drain deadline, hand the
              rest back for immediate reclaim, close clients
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.consumer import ledger
from services.consumer.delivery import ChunkWork, JobSpec, Senders
from shared import keys, metrics
from shared.classify import Decision
from shared.models import Chunk, Failure, Outcome, chunk_decoder
from shared.provider import MessengerClient
from shared.scripts import Scripts
from shared.settings import ConsumerSettings

log = logging.getLogger("fanout.consumer")

_SPEC_CACHE_MAX = 1024
_HAND_BACK_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": anyone's next XAUTOCLAIM takes it
_NO_TOKEN = Decision("failed", "page_token_missing", "", "no page token configured for the page")


class Held:
    """A chunk entry this consumer holds, from read (or reclaim) until finished."""

    __slots__ = ("entry_id", "recipients", "shard", "task")

    def __init__(self, shard: int, entry_id: bytes, recipients: int) -> None:
        self.shard = shard
        self.entry_id = entry_id
        self.recipients = recipients
        self.task: asyncio.Task[None] | None = None


class Consumer:
    def __init__(self, settings: ConsumerSettings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.scripts = Scripts(redis)
        self.name = settings.consumer_name
        self.streams = {keys.work_stream(s): s for s in range(settings.shards)}
        self.client = MessengerClient(
            settings.graph_url,
            settings.graph_version,
            settings.concurrency,
            settings.request_timeout_s,
        )
        self.held: dict[bytes, Held] = {}
        self.stopping = asyncio.Event()
        self.ready = False
        self._room = asyncio.Event()
        self._specs: dict[str, JobSpec] = {}
        self._chunk_size_seen = 100
        self._senders: Senders | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        from services.consumer.reclaim import Upkeep  # a cycle otherwise: upkeep drives us

        self._senders = Senders(self.client, self.settings.concurrency, self.settings.max_attempts)
        await self._join_groups()
        upkeep = Upkeep(self)
        upkeep_task = asyncio.create_task(upkeep.run())
        self.ready = True
        log.info("consumer started", extra={"consumer": self.name, "shards": len(self.streams)})
        try:
            await self._read_loop()
        finally:
            self.ready = False
            await self._drain()
            upkeep_task.cancel()
            await asyncio.gather(upkeep_task, return_exceptions=True)
            await self._senders.close()
            await self.client.close()
            log.info("consumer stopped", extra={"consumer": self.name})

    def stop(self) -> None:
        self.stopping.set()
        self._room.set()

    async def _join_groups(self) -> None:
        for stream in self.streams:
            try:
                # At 0, never $: entries added before the group existed are work too.
                await self.redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _drain(self) -> None:
        tasks = [h.task for h in self.held.values() if h.task is not None]
        if tasks:
            log.info("draining", extra={"chunks": len(tasks), "deadline_s": self.settings.drain_s})
            _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_s)
            if pending:
                await self._hand_back()
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

    async def _hand_back(self) -> None:
        """Chunks that could not finish in time go back for immediate reclaim by others."""
        by_shard: dict[int, list[bytes]] = {}
        for held in self.held.values():
            by_shard.setdefault(held.shard, []).append(held.entry_id)
        for shard, ids in by_shard.items():
            try:
                await self.scripts.lease(
                    keys=[keys.work_stream(shard)],
                    args=[keys.GROUP, self.name, _HAND_BACK_IDLE_MS, *ids],
                )
            except RedisError as exc:
                log.warning(
                    "hand back failed; entries wait for the lease", extra={"error": str(exc)}
                )
        log.info("handed back", extra={"chunks": len(self.held)})

    # --- reading --------------------------------------------------------------------------

    def free_recipients(self) -> int:
        return self.settings.concurrency - sum(h.recipients for h in self.held.values())

    def room_for(self) -> int:
        """How many more chunks to take now: at least one when holding nothing."""
        if not self.held:
            return max(1, self.free_recipients() // self._chunk_size_seen)
        return max(0, self.free_recipients() // self._chunk_size_seen)

    async def _read_loop(self) -> None:
        backoff_s = 0.1
        while not self.stopping.is_set():
            count = self.room_for()
            if count == 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                reply = await self.redis.xreadgroup(
                    keys.GROUP,
                    self.name,
                    dict.fromkeys(self.streams, ">"),
                    count=max(1, count // len(self.streams)),
                    block=self.settings.block_ms,
                )
                replies = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply)
                backoff_s = 0.1
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted under us: recreate
                    await self._join_groups()
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("read failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            for stream, entries in replies or []:
                shard = self.streams[stream.decode()]
                for entry_id, fields in entries:
                    self.take(shard, entry_id, fields, deliveries=1)

    def take(
        self, shard: int, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> None:
        """Hold an entry and start its task (from a read or a reclaim)."""
        if entry_id in self.held:
            return
        payload = fields.get(b"c", b"")
        held = Held(shard, entry_id, self._chunk_size_seen)
        self.held[entry_id] = held
        held.task = asyncio.create_task(self._handle(held, payload, deliveries))

    # --- one chunk ------------------------------------------------------------------------

    async def _handle(self, held: Held, payload: bytes, deliveries: int) -> None:
        try:
            chunk = chunk_decoder.decode(payload)
            held.recipients = len(chunk.ids)
            self._chunk_size_seen = max(1, len(chunk.ids))
            k = keys.JobKeys.of(chunk.job)
            if deliveries > self.settings.max_deliveries:
                await self._dead_letter(held, chunk, k, payload, deliveries)
            else:
                await self._deliver(held, chunk, k, payload)
        except (RedisError, OSError) as exc:
            # Left pending: the lease lapses and someone (maybe us) takes it over.
            log.warning(
                "chunk left for reclaim",
                extra={"entry": held.entry_id.decode(), "error": str(exc)},
            )
        except Exception:
            log.exception("chunk failed unexpectedly", extra={"entry": held.entry_id.decode()})
        finally:
            self.held.pop(held.entry_id, None)
            self._room.set()

    async def _deliver(self, held: Held, chunk: Chunk, k: keys.JobKeys, payload: bytes) -> None:
        spec = self._specs.get(chunk.job)
        begun = await ledger.begin(self.scripts, k, chunk.start, len(chunk.ids), spec is None)
        if spec is None and begun.fields is not None:
            spec = self._spec_for(chunk.job, begun.fields)
        work = ChunkWork(held.entry_id, chunk, k, spec, payload)
        todo = [i for i, state in enumerate(begun.states) if state != ledger.FINISHED]
        if todo and spec is None:
            for i in todo:
                work.fail(i, _NO_TOKEN, 0)
            metrics.MESSAGES.labels("failed", _NO_TOKEN.code).inc(len(todo))
        elif todo:
            assert self._senders is not None
            self._senders.submit(work, todo)
            await work.done
        # Shielded: a cancellation must not leave the chunk half-recorded.
        finished = await asyncio.shield(
            ledger.finish(self.scripts, k, held.entry_id, work.outcome())
        )
        metrics.CHUNKS.labels("finished" if finished.acked else "already_acked").inc()
        if finished.status == "completed" and finished.acked:
            log.info("job completed", extra={"job_id": chunk.job, "shard": k.shard})

    def _spec_for(self, job_id: str, fields: ledger.JobFields) -> JobSpec | None:
        token = self.settings.page_tokens.get(fields.page_id)
        if token is None:
            log.error("no page token for the job's page", extra={"job_id": job_id})
            return None
        if len(self._specs) >= _SPEC_CACHE_MAX:
            self._specs.clear()
        head = self.client.head(token.reveal())
        spec = JobSpec(fields.page_id, head, fields.text, fields.messaging_type, fields.tag)
        self._specs[job_id] = spec
        return spec

    async def _dead_letter(
        self, held: Held, chunk: Chunk, k: keys.JobKeys, payload: bytes, deliveries: int
    ) -> None:
        reason = f"delivered {deliveries} times (max {self.settings.max_deliveries})"
        failures = [
            Failure(chunk.start + i, psid, "dead_letter", "", reason, deliveries)
            for i, psid in enumerate(chunk.ids)
        ]
        finished = await asyncio.shield(
            ledger.finish(
                self.scripts, k, held.entry_id, Outcome([], failures, []), reason, payload
            )
        )
        metrics.DEAD_LETTERS.inc()
        metrics.MESSAGES.labels("failed", "dead_letter").inc(finished.failed)
        log.error(
            "chunk dead-lettered",
            extra={
                "job_id": chunk.job,
                "chunk": chunk.no,
                "shard": k.shard,
                "failed": finished.failed,
            },
        )
