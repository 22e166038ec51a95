"""The consumer: chunks are the stream engine's first kind of work (services/consumer/
engine.py reads, renews leases, reclaims and drains; this module says what a chunk is).

run()
  ├── engine: XREADGROUP (BLOCK) on every shard's work stream, only while the chunks held
  │           leave room for more recipients than ``concurrency`` (room_for: no hoarding);
  │           a read that came back short with senders idle asks the jobs it holds chunks of
  │           for more (top_up: the release window follows the fleet's demand);
  │           leases renewed, idle chunks of dead consumers taken over with their delivery
  │           count (past FANOUT_MAX_DELIVERIES: the dead stream)
  ├── one task per chunk: begin (ledger) -> senders -> finish (ledger, ack, release next)
  ├── housekeeping beside it: scheduled jobs, retention, gone consumers (housekeeping.py)
  └── stop(): stop reading, let held chunks finish until the drain deadline, put the
              rest back in their streams as new entries (read at once by the fleet), close
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import msgspec
from msgspec.structs import replace
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.consumer import housekeeping, ledger, pairs, reach, screen
from services.consumer.attachments import Uploads
from services.consumer.delivery import ChunkWork, JobSpec, Senders
from services.consumer.demand import Demand
from services.consumer.engine import Engine, Entry
from services.consumer.limiter import Limiters
from services.consumer.recorder import FLUSH_AT, Batch, Recorder
from shared import audit, control, jobview, keys, metrics, suppressions
from shared.classify import Decision
from shared.models import Chunk, Failure, Outcome, chunk_decoder
from shared.provider import MessengerClient
from shared.providers import Provider, UnknownChannel, provider_for
from shared.scripts import Scripts
from shared.settings import ConsumerSettings

log = logging.getLogger("fanout.consumer")

_SPEC_CACHE_MAX = 1024
_SENT = metrics.MESSAGES.labels("sent", "")
_NO_TOKEN = Decision("failed", "page_token_missing", "", "no page token configured for the page")


class Held:
    """A chunk entry this consumer holds, from read (or reclaim) until finished."""

    __slots__ = ("entry_id", "parked", "payload", "recipients", "shard", "waiting", "work")

    def __init__(self, shard: int, entry_id: bytes, payload: bytes, recipients: int) -> None:
        self.shard = shard
        self.entry_id = entry_id
        self.payload = payload
        self.recipients = recipients
        self.work: ChunkWork | None = None
        self.waiting = False  # for its page's permits
        # Waiting for a place in a WhatsApp tier (hours, maybe): not counted in the held bound,
        # so jobs that wait for their tier never keep other jobs' chunks out.
        self.parked = False

    def reserved(self) -> int:
        """Sender capacity this chunk claims: what it has in flight or queued, plus what it is
        about to submit unless it is waiting for permits. A chunk held back by its page's
        rate limit so claims almost nothing, and never keeps other pages' chunks out."""
        work = self.work
        if work is None:
            return self.recipients
        return work.remaining + (0 if self.waiting else work.unsubmitted)


class Consumer:
    """The engine's ``Kind`` for chunks, and what delivering them needs."""

    name = "chunks"
    group = keys.GROUP

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
            settings.graph_proxy,
        )
        # By (shard, entry id): two shards' streams can mint the same id in one millisecond.
        self.held: dict[tuple[int, bytes], Held] = {}
        self.stopping = asyncio.Event()
        self.ready = False
        self.engine = Engine(
            redis,
            self.scripts,
            self,
            self.name,
            claim_idle_ms=settings.claim_idle_ms,
            block_ms=settings.block_ms,
            drain_s=settings.drain_s,
            top_up=self.top_up,
        )
        self._demand = Demand(self.scripts)  # the release window follows demand
        self._specs: dict[str, JobSpec] = {}
        self._recorders: dict[str, Recorder] = {}
        self._chunk_size_seen = 100
        # Chunks waiting for their page's permits claim no capacity but still count here: a
        # generous bound, so many throttled jobs cannot shut out the rest, yet no hoarding.
        self._max_held = settings.concurrency // 100 + 64
        # One set per channel, at the channel's rates; the keys are per sender either way.
        self._limiters: dict[str, Limiters] = {}
        self._uploads = Uploads(self.scripts, self.client, self.name, settings.request_timeout_s)
        self._stopping_jobs: set[asyncio.Task[object]] = set()
        self._restricting: set[str] = set()  # pages whose jobs this consumer is pausing
        self._senders: Senders | None = None
        # WhatsApp's last permits before a POST, at most this many Redis calls at once.
        self._permit_calls = asyncio.Semaphore(pairs.CONCURRENT_CALLS)

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        self._senders = Senders(
            self.client,
            self.settings.concurrency,
            self.settings.max_attempts,
            self._stop_job,
            self.settings.retry_budget_s,
            self._suppress,
        )
        await self.engine.join_groups()
        upkeep_task = asyncio.create_task(housekeeping.run(self.redis, self.scripts, self.settings))
        self.ready = True
        log.info("consumer started", extra={"consumer": self.name, "shards": len(self.streams)})
        try:
            await self.engine.run()  # until stop(), then the drain
        finally:
            self.ready = False
            upkeep_task.cancel()
            await asyncio.gather(upkeep_task, return_exceptions=True)
            await self._senders.close()
            await self.client.close()
            log.info("consumer stopped", extra={"consumer": self.name})

    def stop(self) -> None:
        self.stopping.set()
        self.engine.stop()

    async def hand_back(self, entries: list[Entry]) -> None:
        """Chunks that could not finish in time go back to the fleet at once: what they got is
        recorded, and the entry is put back in its stream as a new one (the finish script's
        requeue), which a blocking reader elsewhere receives immediately; a paused job's goes
        back to its backlog. Recipients still in flight here are attempted-but-unfinished, so
        their next holder counts them in doubt. Only if Redis refuses does an entry wait for a
        lease to lapse."""
        handed = 0
        for entry in entries:
            held = entry.work
            if not isinstance(held, Held):
                continue
            try:
                chunk = chunk_decoder.decode(held.payload)
                outcome = held.work.outcome() if held.work else Outcome([], [], [])
                finished = await ledger.finish(
                    self.scripts,
                    keys.JobKeys.of(chunk.job),
                    held.entry_id,
                    outcome,
                    payload=held.payload,
                    requeue=True,
                )
                handed += finished.acked
            except (RedisError, OSError, msgspec.MsgspecError) as exc:
                log.warning(
                    "hand back failed; the entry waits for its lease",
                    extra={"entry": held.entry_id.decode(), "error": str(exc)},
                )
        log.info("handed back", extra={"chunks": handed})

    def taken_over(self, entry: Entry) -> None:
        metrics.CHUNKS_RECLAIMED.inc()

    def deleted(self, stream: str, ids: list[bytes]) -> None:
        metrics.CHUNKS_LOST.inc(len(ids))

    # --- reading --------------------------------------------------------------------------

    def free_recipients(self, starting: int = 0) -> int:
        reserved = sum(h.reserved() for h in self.held.values())
        return self.settings.concurrency - reserved - starting * self._chunk_size_seen

    def room_for(self, starting: int = 0) -> int:
        """How many more chunks to take now: one more whenever any sender would otherwise sit
        idle, and never more than a bounded number held (chunks waiting for permits claim no
        capacity). ``starting``: chunks taken whose task has not begun yet, each claiming a
        full chunk. Rounded up, not down: with fewer senders than a chunk has recipients, a
        floor would read nothing while one throttled chunk holds a few senders, and another
        page's job would wait behind it."""
        parked = sum(1 for h in self.held.values() if h.parked)
        held = len(self.held) - parked + starting
        if held >= self._max_held:
            return 0
        free = self.free_recipients(starting)
        if not held:
            return max(1, -(-free // self._chunk_size_seen))
        return max(0, -(-free // self._chunk_size_seen))

    def room(self, held: int) -> int:
        # The engine holds every entry from the moment it is read; this consumer's Held only
        # once its task runs: the difference is chunks about to start.
        return self.room_for(starting=max(0, held - len(self.held)))

    async def top_up(self, stream: str, wanted: int) -> int:
        """A short read of ``stream``: with a chunk's worth of senders idle or more, ask the
        jobs of the shard's chunks held here for more (demand.py)."""
        if self.free_recipients() < self._chunk_size_seen:
            return 0  # the next finish releases a chunk anyway
        shard = self.streams[stream]
        held = [
            (h.work.spec, h.waiting)
            for h in self.held.values()
            if h.shard == shard and h.work is not None
        ]
        return await self._demand.top_up(stream, wanted, held)

    # --- one chunk ------------------------------------------------------------------------

    async def handle(self, entry: Entry) -> None:
        """Hold an entry (from a read or a takeover) and deliver its chunk."""
        shard = self.streams[entry.stream]
        payload = entry.fields.get(b"c", b"")
        held = Held(shard, entry.entry_id, payload, self._chunk_size_seen)
        entry.work = held  # for a hand-back at the drain
        self.held[(shard, entry.entry_id)] = held
        await self._handle(held, payload, entry.deliveries)

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
            if held.work is not None and not held.work.done.done():
                held.work.done.set_result(None)  # abandoned: senders drop what is queued
            self.held.pop((held.shard, held.entry_id), None)

    async def _deliver(self, held: Held, chunk: Chunk, k: keys.JobKeys, payload: bytes) -> None:
        # Every ledger call of a chunk is retried while Redis is unreachable: the chunk keeps
        # its answers and goes on when Redis is back, instead of waiting out a lease.
        spec = await ledger.retrying(partial(self._spec, k), "job spec")
        requeue = False
        riding: Batch | None = None
        recorder: Recorder | None = None
        if spec is None:  # the job is gone, or its page has no token here
            outcome = await self._unsendable(chunk, k)
        else:
            work = ChunkWork(held.entry_id, chunk, spec, self._recorder(k))
            held.work = work
            await self._submit(held, work)
            await work.done
            outcome = work.outcome()
            requeue = work.requeue
            # The job's sent answers still waiting for a write go with this finish instead.
            recorder = work.recorder
            riding = recorder.take_sent()
        written = outcome
        if riding is not None:
            written = Outcome([*outcome.sent, *riding.sent], outcome.failed, outcome.doubtful)
        finish = partial(
            ledger.finish, self.scripts, k, held.entry_id, written, payload=payload, requeue=requeue
        )
        # Shielded: a cancellation must not leave the chunk half-recorded.
        try:
            finished = await asyncio.shield(ledger.retrying(finish, "finish chunk"))
        except BaseException:
            if recorder is not None and riding is not None:
                recorder.give_back(riding)
            raise
        if riding is not None:
            riding.set_written()
        metrics.CHUNKS.labels("finished" if finished.acked else "already_acked").inc()
        _SENT.inc(len(outcome.sent))
        if finished.status == "completed" and finished.acked:
            log.info("job completed", extra={"job_id": chunk.job, "shard": k.shard})
        if finished.status in jobview.ENDED:  # this finish may have been the job's last
            await audit.job_ended(self.redis, chunk.job)

    async def _submit(self, held: Held, work: ChunkWork) -> None:
        """Hand the chunk's recipients to the senders a permit batch at a time, marking each
        batch attempted just before; stop early if the job was stopped. A WhatsApp template's
        recipients first take their places in the portfolio's tier."""
        sendable = await self._screen(work)
        if work.spec.reach is None:
            await self._send(held, work, sendable)
        else:
            await self._send_within_tier(held, work, work.spec.reach, sendable)
        work.all_submitted()

    async def _send_within_tier(
        self, held: Held, work: ChunkWork, tier: reach.Reach, todo: list[int]
    ) -> None:
        """Each person outside their service window takes a place in the portfolio's tier
        before their permit (reach.py); who finds none waits, the chunk claiming no sender
        capacity, until a place returns. Nobody is sent beyond the tier or skipped for it."""
        ids, spec = work.chunk.ids, work.spec
        waited = False
        while todo and not spec.stopped:
            people = [ids[i] for i in todo]
            split = await ledger.retrying(partial(tier.split, people), "tier places")
            if waited and not split.waiting:
                await ledger.retrying(partial(reach.release, self.redis, spec.keys), "tier hold")
            for run in reach.runs([todo[i] for i in split.admitted]):
                if not await self._send(held, work, run):
                    return
            todo = [todo[i] for i in split.waiting]
            if not todo:
                return
            held.waiting = held.parked = waited = True
            self.engine.wake()  # waiting frees capacity for other chunks
            try:
                wait = partial(tier.wait, spec.keys, split.wait_s, lambda: spec.stopped)
                status = await ledger.retrying(partial(wait, self.stopping), "tier wait")
            finally:
                held.waiting = held.parked = False
            if self.stopping.is_set() or status not in (b"pending", b"running"):
                # Paused: the chunk goes back to the backlog until resumed; this consumer
                # stopping: back to the stream for the fleet at once. Stopped: nothing to do.
                work.requeue = self.stopping.is_set() or status == b"paused"
                return

    async def _send(self, held: Held, work: ChunkWork, sendable: list[int]) -> bool:
        """Permits, then the ledger's mark, then the senders, a batch at a time; False once
        the job is no longer running (paused: the chunk goes back to the backlog)."""
        assert self._senders is not None
        chunk, spec = work.chunk, work.spec
        offset = 0
        while offset < len(sendable) and not spec.stopped:
            held.waiting = True
            self.engine.wake()  # waiting frees capacity for other pages' chunks
            try:
                taken = await ledger.retrying(
                    partial(spec.limiter.take, len(sendable) - offset), "take permits"
                )
            finally:
                held.waiting = False
            batch = sendable[offset : offset + taken]
            # One range per batch: recipients skipped inside it read as finished.
            first, span = batch[0], batch[-1] - batch[0] + 1
            begin = partial(ledger.begin, self.scripts, spec.keys, chunk.start + first, span)
            begun = await ledger.retrying(begin, "begin chunk")
            if begun.status not in ("pending", "running"):
                # Paused: the rest waits for resume. Stopped, completed or gone: nothing to do.
                work.requeue = begun.status == "paused"
                return False
            todo = [i for i in batch if begun.states[i - first] != ledger.FINISHED]
            self._senders.submit(work, todo, len(batch))
            offset += len(batch)
        return True

    async def _screen(self, work: ChunkWork) -> list[int]:
        """Skip (or route to the fallback) who must not get the message, with one read script
        and at most one write script per chunk, before any permit is taken; the indexes to
        send."""
        chunk, spec = work.chunk, work.spec
        screened = await ledger.retrying(
            partial(
                screen.screen,
                self.scripts,
                spec.page_id,
                chunk,
                require_window=spec.window_require,
                suppress=spec.suppress,
                has_fallback=spec.has_fallback,
            ),
            "screen chunk",
        )
        if not (screened.skipped or screened.fallback):
            return list(range(len(chunk.ids)))
        fallback = [chunk.start + i for i in screened.fallback]
        skip = partial(ledger.skip, self.scripts, spec.keys, screened.skipped, fallback)
        counted = await ledger.retrying(skip, "skip recipients")
        for code, count in counted.items():
            metrics.MESSAGES.labels("skipped", code).inc(count)
        work.fallback = frozenset(screened.fallback)
        gone = screened.skipped_indexes(chunk.start)
        work.unsubmitted -= len(gone)
        return [i for i in range(len(chunk.ids)) if i not in gone]

    async def _suppress(self, spec: JobSpec, psid: str, decision: Decision) -> None:
        code = f"{decision.code}/{decision.subcode}" if decision.subcode else decision.code
        now_ms = int(time.time() * 1000)
        try:
            await suppressions.add(self.redis, spec.page_id, [psid], code, now_ms)
        except (RedisError, OSError) as exc:
            # The person's next permanent answer suppresses them; nothing else is lost.
            extra = {"job_id": spec.job_id, "error": str(exc)}
            log.warning("suppression not recorded", extra=extra)

    def _recorder(self, k: keys.JobKeys) -> Recorder:
        """The job's recorder, shared by the chunks of the job this consumer holds."""
        recorder = self._recorders.get(k.job_id)
        if recorder is None:
            if len(self._recorders) >= _SPEC_CACHE_MAX:
                self._recorders = {j: r for j, r in self._recorders.items() if not r.idle()}
            flush_at = max(1, min(FLUSH_AT, self.settings.concurrency // 4))
            recorder = self._recorders[k.job_id] = Recorder(self.scripts, k, flush_at=flush_at)
        return recorder

    async def _spec(self, k: keys.JobKeys) -> JobSpec | None:
        spec = self._specs.get(k.job_id)
        if spec is not None:
            return spec
        try:
            fields = await ledger.fields(self.redis, k)
        except UnknownChannel as exc:  # a newer producer's job: this build cannot send it
            log.error("job of an unknown channel", extra={"job_id": k.job_id, "error": str(exc)})
            return None
        if fields is None:
            return None
        provider = provider_for(fields.channel)
        token = provider.token(self.settings, fields.page_id)
        if token is None:
            log.error("no token for the job's sender", extra={"job_id": k.job_id})
            return None
        upload = partial(self._uploads.prepare, k, token.reveal())
        message = await provider.prepare(fields.message, upload)
        if len(self._specs) >= _SPEC_CACHE_MAX:
            self._specs.clear()
        # The message as sent (Messenger's media by attachment id), unless it cannot be.
        sendable = fields if message is None else replace(fields, message=message)
        path = provider.path(self.settings.graph_version, fields.page_id)
        limiters = self._limiters_for(provider)
        spec = JobSpec(
            k,
            fields.page_id,
            self.client.head_at(path, token.reveal()),
            limiters.for_message(fields.page_id, provider.is_media(fields.message)),
            sendable.message,
            provider.request(k.job_id, sendable),
            provider.classify,
            window_require=fields.window_require,
            suppress=fields.suppress,
        )
        spec.stopped = message is None  # the job ended, or its attachment could not be uploaded
        # WhatsApp: the per-person pair permit and the portfolio's tier (None for Messenger).
        spec.pairs = pairs.for_job(
            self.scripts, provider, self.settings, fields.page_id, self._permit_calls
        )
        spec.reach = reach.for_job(
            self.scripts, self.redis, self.settings, fields.channel, fields.page_id, spec.message
        )
        self._specs[k.job_id] = spec
        return spec

    def _limiters_for(self, provider: Provider) -> Limiters:
        limiters = self._limiters.get(provider.channel)
        if limiters is None:
            rates = provider.rates(self.settings)
            limiters = self._limiters[provider.channel] = Limiters(
                self.scripts,
                rates.default,
                rates.per_sender,
                self.settings.rate_burst_ms,
                rates.media_default,
                rates.media_per_sender,
                strict=rates.strict,
            )
        return limiters

    async def _unsendable(self, chunk: Chunk, k: keys.JobKeys) -> Outcome:
        """A chunk whose job is gone (finish only settles it) or whose page has no token here
        (its unfinished recipients fail with page_token_missing)."""
        begin = partial(ledger.begin, self.scripts, k, chunk.start, len(chunk.ids))
        begun = await ledger.retrying(begin, "begin chunk")
        failures = [
            Failure(chunk.start + i, chunk.ids[i], _NO_TOKEN.code, "", _NO_TOKEN.message, 0)
            for i, state in enumerate(begun.states)
            if state != ledger.FINISHED
        ]
        if failures:
            metrics.MESSAGES.labels("failed", _NO_TOKEN.code).inc(len(failures))
        return Outcome([], failures, [])

    def _stop_job(self, spec: JobSpec, decision: Decision) -> None:
        """A fatal answer (the page's token is invalid): stop the job fleet-wide, once. A
        restricted page: pause every job of the page instead."""
        if decision.verdict == "restricted":
            self._restrict_page(spec, decision)
            return
        if spec.stopped:
            return
        spec.stopped = True
        reason = f"provider error {decision.code}"
        if decision.subcode:
            reason += f"/{decision.subcode}"
        reason = f"{reason}: {decision.message}"[:300]
        log.error("stopping job", extra={"job_id": spec.job_id, "reason": reason})
        task = asyncio.create_task(self._fail_job(spec.keys, reason))
        self._stopping_jobs.add(task)
        task.add_done_callback(self._stopping_jobs.discard)

    async def _fail_job(self, k: keys.JobKeys, reason: str) -> None:
        if await control.stop_job(self.scripts, k, "failed", reason):
            await audit.job_ended(self.redis, k.job_id)

    def _restrict_page(self, spec: JobSpec, decision: Decision) -> None:
        """Meta restricted the page (10/1893063): pause every job of the page fleet-wide, once
        per consumer and restriction (the script is idempotent for the rest of the fleet)."""
        if spec.page_id in self._restricting:
            return
        self._restricting.add(spec.page_id)
        # WhatsApp's codes (131048, 368) have no subcode: no dangling "/" in the reason.
        code = f"{decision.code}/{decision.subcode}" if decision.subcode else decision.code
        reason = f"page_restricted: Meta answered {code}: {decision.message}"[:300]
        log.error("page restricted; pausing its jobs", extra={"job_id": spec.job_id})

        async def pause() -> bool:
            try:
                paused = await control.pause_page(self.scripts, spec.page_id, reason)
                log.warning("paused the page's jobs", extra={"jobs": len(paused)})
                return True
            except (RedisError, OSError) as exc:
                # The next 10/1893063 answer tries again; until then the page's permits stop
                # only here.
                log.warning("page not restricted yet", extra={"error": str(exc)})
                return False
            finally:
                self._restricting.discard(spec.page_id)

        task = asyncio.create_task(pause())
        self._stopping_jobs.add(task)
        task.add_done_callback(self._stopping_jobs.discard)

    async def _dead_letter(
        self, held: Held, chunk: Chunk, k: keys.JobKeys, payload: bytes, deliveries: int
    ) -> None:
        reason = f"delivered {deliveries} times (max {self.settings.max_deliveries})"
        failures = [
            Failure(chunk.start + i, psid, "dead_letter", "", reason, deliveries)
            for i, psid in enumerate(chunk.ids)
        ]
        outcome = Outcome([], failures, [])
        finish = partial(ledger.finish, self.scripts, k, held.entry_id, outcome, reason, payload)
        finished = await asyncio.shield(ledger.retrying(finish, "dead-letter chunk"))
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
        if finished.status in jobview.ENDED:
            await audit.job_ended(self.redis, chunk.job)
