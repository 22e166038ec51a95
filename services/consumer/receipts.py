"""Receipts: Meta's echoes and delivery/read watermarks turned into per-recipient
``delivered`` and ``read`` bits of the jobs that sent to the person.

A watermark names only (page, PSID) and a time, and covers every earlier message to that
person, across jobs. So each echo of our send (its metadata names job and position, its
timestamp is Meta's send time) leaves a 13-byte record in one of the page's ``BUCKETS``
strings, picked by a hash of the PSID; a watermark scans that bucket for the person's
records (a 5-byte fingerprint from the same hash: with the bucket, 52 bits, so a watermark
flipping a stranger's bit in a bucket of 250 people is a one-in-4*10^12 event) and flips the
covered ones. Read records are dropped (nothing more can happen to them); a watermark that
covered nothing is kept for a day, for an echo that comes after it. ``bench/webhooks.py``
measures the bytes per recipient.

Two steps, two slots: the bucket script runs in the page's slot and answers (job, position)s;
the flip runs in each job's slot. Both are idempotent, so a replayed event flips nothing
twice. Counts are "at least": receipts are best effort (a crash between the steps loses
that event's flips rather than counting any twice).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from typing import Literal

from redis.asyncio import Redis

from shared import keys, metrics
from shared.scripts import Scripts

BUCKETS = 4096  # ~250 records (4 KiB) each at a million recipients of a page
Kind = Literal["d", "r"]
_RECEIPTS = {
    "delivered": metrics.RECEIPTS.labels("delivered"),
    "read": metrics.RECEIPTS.labels("read"),
}


def locate(psid: str) -> tuple[int, bytes]:
    """The person's bucket and fingerprint within it."""
    digest = hashlib.blake2b(psid.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:2], "big") % BUCKETS, digest[2:7]


class Receipts:
    def __init__(self, redis: Redis, scripts: Scripts, keep_s: int) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keep_ms = keep_s * 1000  # as long as a job is kept

    async def echo(self, page_id: str, psid: str, job_id: str, position: int, ts_ms: int) -> None:
        bucket, fp = locate(psid)
        delivered, read = await self.scripts.receipt_echo(
            keys=[keys.receipts(page_id, bucket), keys.receipt_jobs(page_id)],
            args=[fp, job_id, position, ts_ms, self.keep_ms],
        )
        if read:
            await self._flip(page_id, job_id, "r", [position])
        elif delivered:
            await self._flip(page_id, job_id, "d", [position])

    async def watermark(self, page_id: str, psid: str, kind: Kind, watermark_ms: int) -> None:
        bucket, fp = locate(psid)
        reply = await self.scripts.receipt_mark(
            keys=[keys.receipts(page_id, bucket), keys.receipt_jobs(page_id)],
            args=[fp, kind, watermark_ms, self.keep_ms, int(time.time() * 1000)],
        )
        by_job: dict[str, list[int]] = defaultdict(list)
        for i in range(0, len(reply), 2):
            by_job[reply[i].decode()].append(int(reply[i + 1]))
        for job_id, positions in by_job.items():
            await self._flip(page_id, job_id, kind, positions)

    async def _flip(self, page_id: str, job_id: str, kind: Kind, positions: list[int]) -> None:
        if keys.shard_of(job_id) is None:
            return
        k = keys.JobKeys.of(job_id)
        delivered, read = await self.scripts.receipt_flip(
            keys=[k.hash, k.delivered, k.read, k.series], args=[kind, page_id, *positions]
        )
        if delivered:
            _RECEIPTS["delivered"].inc(delivered)
        if read:
            _RECEIPTS["read"].inc(read)
