"""Jobs in Redis, from the producer's side: cut a request into chunks and commit it; read it back.

A job is written in one pipelined round trip: the backlog first (RPUSH in large batches, with
an expiry so a producer that dies half-way leaves nothing behind for long), then the
``create_job`` script, the commit point, which makes the job visible and releases its first
window of chunks into the shard's work stream.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from shared import jobview, keys, messages
from shared.models import (
    Chunk,
    ErrorItem,
    ErrorPage,
    JobRequest,
    JobView,
    Message,
    UploadSpec,
    json_encode,
    msgpack_encode,
)
from shared.redisconn import replicated
from shared.scripts import Scripts
from shared.settings import ProducerSettings

_PUSH_BATCH = 1000  # chunks per RPUSH: big enough to amortise, small enough not to stall Redis
_UNCOMMITTED_TTL_S = 3600


class PreparedJob(msgspec.Struct, kw_only=True):
    job_id: str
    total: int
    duplicates_removed: int
    chunks: list[bytes]
    fields: dict[str, Any]
    send_at_ms: int  # 0: now
    idempotency: str | None  # the Redis key holding the first job for this Idempotency-Key
    fingerprint: str  # of the request, so a reused key with another request is refused


class Committed(msgspec.Struct):
    job_id: str
    outcome: str  # "created" | "existing" | "conflict"


def shard_for(tenant: str, idempotency_key: str | None, shards: int) -> int:
    """Random, unless an Idempotency-Key pins the job (so a retry finds the first one)."""
    if idempotency_key is None:
        return random.randrange(shards)
    return zlib.crc32(f"{tenant}:{idempotency_key}".encode()) % shards


def job_fields(
    spec: UploadSpec,
    message: Message,
    tenant: str,
    settings: ProducerSettings,
    total: int,
    chunks: int,
) -> dict[str, Any]:
    """The job hash's fields (the counters are the create script's). ``message`` is Meta's
    message object as JSON; ``text`` stays for consumers of a release that read only that
    (old and new pods share Redis during a rolling deploy)."""
    return {
        "tenant": tenant,
        "page_id": spec.page_id,
        "message": messages.encode(message).decode(),
        "kind": messages.kind(message),
        "text": message.text or "",
        "messaging_type": spec.messaging_type,
        "tag": spec.tag or "",
        "metadata": json_encode(spec.metadata).decode() if spec.metadata else "",
        "callback_url": spec.callback_url or "",
        "total": total,
        "chunks": chunks,
        "chunk_size": settings.chunk_size,
        "window": settings.window,
        # The job's own window rule; the producer writes the one that applies (window_rule).
        "window_asked": spec.window or "",
        "suppress": "1" if spec.suppress else "0",
        "fallback": "" if spec.fallback is None else fallback_json(spec.fallback),
        # record_answers.lua pauses the job above this share of person/message failures
        "max_failure_rate": repr(spec.max_failure_rate),
    }


def fallback_json(message: Message) -> str:
    """The fallback as sent: its placeholders filled with their defaults."""
    return messages.encode(messages.Personalised(message).render({})).decode()


def prepare(
    request: JobRequest,
    message: Message,
    body: bytes,
    tenant: str,
    settings: ProducerSettings,
    send_at_ms: int,
    idempotency_key: str | None,
) -> PreparedJob:
    """CPU-only work (no I/O), so the caller can run it in a thread for big jobs."""
    recipients = list(dict.fromkeys(request.recipients))
    shard = shard_for(tenant, idempotency_key, settings.shards)
    job_id = keys.new_job_id(shard)
    chunks = encode_chunks(job_id, recipients, settings.chunk_size)
    fields = job_fields(request, message, tenant, settings, len(recipients), len(chunks))
    return PreparedJob(
        job_id=job_id,
        total=len(recipients),
        duplicates_removed=len(request.recipients) - len(recipients),
        chunks=chunks,
        fields=fields,
        send_at_ms=send_at_ms,
        idempotency=None
        if idempotency_key is None
        else keys.idempotency(shard, tenant, idempotency_key),
        fingerprint="" if idempotency_key is None else hashlib.sha256(body).hexdigest(),
    )


def encode_chunks(job_id: str, recipients: list[str], size: int) -> list[bytes]:
    """The job's work-stream entries: runs of ``size`` consecutive (deduplicated) recipients."""
    return [
        msgpack_encode(Chunk(job=job_id, no=no, start=start, ids=recipients[start : start + size]))
        for no, start in enumerate(range(0, len(recipients), size))
    ]


async def commit(
    redis: Redis, scripts: Scripts, job: PreparedJob, window: int, retention_s: int
) -> Committed:
    k = keys.JobKeys.of(job.job_id)
    tenant = job.fields["tenant"]
    if job.chunks:
        # Scripts cannot ride in a pipeline on a Redis Cluster: the backlog goes first, the
        # commit script after.
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(0, len(job.chunks), _PUSH_BATCH):
                pipe.rpush(k.backlog, *job.chunks[i : i + _PUSH_BATCH])
            pipe.expire(k.backlog, _UNCOMMITTED_TTL_S)
            await pipe.execute()
    reply = await scripts.create_job(
        keys=[
            *(k.hash, k.backlog, k.work, keys.tenant_jobs(tenant, k.shard), k.stats),
            *(k.scheduled, job.idempotency or k.hash),
        ],
        args=[
            *(job.job_id, window, msgpack_encode(job.fields), job.send_at_ms),
            *(job.fingerprint, retention_s),
        ],
    )
    # The caller is told "accepted" only once a replica has the job (on a cluster).
    await replicated(redis, k.hash)
    job_id, outcome = reply
    return Committed(job_id.decode(), outcome.decode())


async def read(redis: Redis, job_id: str, tenant: str) -> JobView | None:
    """The job as its tenant sees it; None when it does not exist or belongs to another."""
    found = await jobview.load(redis, job_id)
    if found is None or found[0] != tenant:
        return None
    return found[1]


async def errors(
    redis: Redis, job_id: str, after: str | None, limit: int, skipped: bool = False
) -> ErrorPage:
    """One page of the job's failure records (or ``skipped``: of the recipients skipped at
    dispatch, with their reason as the code), oldest first."""
    start = f"({after}" if after else "-"
    k = keys.JobKeys.of(job_id)
    raw = await redis.xrange(k.skips if skipped else k.errors, start, "+", count=limit)
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw)
    items = [
        ErrorItem(
            recipient=f[b"recipient"].decode(),
            code=f[b"code"].decode(),
            subcode=f[b"subcode"].decode() or None,
            message=f[b"message"].decode(),
            attempts=int(f[b"attempts"]),
        )
        for _, f in entries
    ]
    more = len(entries) == limit
    return ErrorPage(items=items, next=entries[-1][0].decode() if more else None)
