"""Who of a chunk is not sent the job's message, decided at dispatch without any API call.

One pipelined read per chunk (not per recipient) asks the page's suppression list and, when
the job requires the 24-hour window, the window's buckets, for every recipient of the chunk:

  suppressed                  skipped, code ``suppressed`` (unless the job set suppress false)
  outside the window          the job's utility ``fallback`` when it has one, else skipped
                              with code ``window_closed``
  anyone else                 sent as usual
"""

from __future__ import annotations

import time
from typing import cast

import msgspec
from redis.asyncio import Redis

from services.consumer.ledger import Skip
from shared import suppressions, window
from shared.models import Chunk

_SUPPRESSED = "the person is on the page's suppression list"
_CLOSED = "no interaction from the person in the last 24 hours"


class Screened(msgspec.Struct):
    skipped: list[Skip]  # by position in the job
    fallback: list[int]  # indexes in the chunk to send the fallback to

    def skipped_indexes(self, start: int) -> set[int]:
        return {s.pos - start for s in self.skipped}


NOTHING = Screened([], [])


async def screen(
    redis: Redis,
    page_id: str,
    chunk: Chunk,
    *,
    require_window: bool,
    suppress: bool,
    has_fallback: bool,
) -> Screened:
    if not (require_window or suppress) or not chunk.ids:
        return NOTHING
    ids = chunk.ids
    async with redis.pipeline(transaction=False) as pipe:
        if suppress:
            suppressions.queue_reads(pipe, page_id, ids)
        if require_window:
            window.queue_reads(pipe, page_id, ids)
        replies = cast(list[object], await pipe.execute())
    n = len(ids) if suppress else 0
    suppressed = replies[:n] if suppress else [None] * len(ids)
    lasts = window.newest(replies[n:])
    now_s = time.time()
    skipped: list[Skip] = []
    fallback: list[int] = []
    for i, psid in enumerate(ids):
        if suppressed[i] is not None:
            skipped.append(Skip(chunk.start + i, psid, "suppressed", _SUPPRESSED))
        elif require_window:
            if window.in_window(lasts[i], now_s):
                continue
            if has_fallback:
                fallback.append(i)
            else:
                skipped.append(Skip(chunk.start + i, psid, "window_closed", _CLOSED))
    return Screened(skipped, fallback)
