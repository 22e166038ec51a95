"""Jobs in Redis, from the producer's side: cut a request into chunks and commit it; read it back.

A job is written in one pipelined round trip: the backlog first (RPUSH in large batches, with
an expiry so a producer that dies half-way leaves nothing behind for long), then the
``create_job`` script, the commit point, which makes the job visible and releases its first
window of chunks into the shard's work stream.
"""

from __future__ import annotations

import random
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from shared import jobview, keys
from shared.models import (
    Chunk,
    ErrorItem,
    ErrorPage,
    JobRequest,
    JobView,
    json_encode,
    msgpack_encode,
)
from shared.scripts import Scripts

_PUSH_BATCH = 1000  # chunks per RPUSH: big enough to amortise, small enough not to stall Redis
_UNCOMMITTED_TTL_S = 3600


class PreparedJob(msgspec.Struct, kw_only=True):
    job_id: str
    total: int
    duplicates_removed: int
    chunks: list[bytes]
    fields: dict[str, Any]


def prepare(request: JobRequest, tenant: str, shards: int, chunk_size: int) -> PreparedJob:
    """CPU-only work (no I/O), so the caller can run it in a thread for big jobs."""
    recipients = list(dict.fromkeys(request.recipients))
    job_id = keys.new_job_id(random.randrange(shards))
    chunks = [
        msgpack_encode(
            Chunk(job=job_id, no=no, start=start, ids=recipients[start : start + chunk_size])
        )
        for no, start in enumerate(range(0, len(recipients), chunk_size))
    ]
    fields: dict[str, Any] = {
        "tenant": tenant,
        "page_id": request.page_id,
        "text": request.message.text,
        "messaging_type": request.messaging_type,
        "tag": request.tag or "",
        "metadata": json_encode(request.metadata).decode() if request.metadata else "",
        "total": len(recipients),
        "chunks": len(chunks),
        "chunk_size": chunk_size,
    }
    return PreparedJob(
        job_id=job_id,
        total=len(recipients),
        duplicates_removed=len(request.recipients) - len(recipients),
        chunks=chunks,
        fields=fields,
    )


async def commit(redis: Redis, scripts: Scripts, job: PreparedJob, window: int) -> None:
    k = keys.JobKeys.of(job.job_id)
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(0, len(job.chunks), _PUSH_BATCH):
            pipe.rpush(k.backlog, *job.chunks[i : i + _PUSH_BATCH])
        pipe.expire(k.backlog, _UNCOMMITTED_TTL_S)
        await scripts.create_job(
            keys=[
                k.hash,
                k.backlog,
                k.work,
                keys.tenant_jobs(job.fields["tenant"], k.shard),
                k.stats,
            ],
            args=[job.job_id, window, msgpack_encode(job.fields)],
            client=pipe,
        )
        await pipe.execute()


async def read(redis: Redis, job_id: str, tenant: str) -> JobView | None:
    """The job as its tenant sees it; None when it does not exist or belongs to another."""
    found = await jobview.load(redis, job_id)
    if found is None or found[0] != tenant:
        return None
    return found[1]


async def errors(redis: Redis, job_id: str, after: str | None, limit: int) -> ErrorPage:
    """One page of the job's failure records, oldest first."""
    start = f"({after}" if after else "-"
    raw = await redis.xrange(keys.JobKeys.of(job_id).errors, start, "+", count=limit)
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
