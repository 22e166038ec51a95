"""Who of a chunk is not sent the job's message, decided at dispatch without any API call.

One read-only script call per chunk (shared/lua/screen.lua, every key in the page's slot) asks
the page's suppression list and, when the job requires the 24-hour window, the window's
buckets in every tier, for every recipient of the chunk:

  suppressed                  skipped, code ``suppressed`` (unless the job set suppress false)
  outside the window          the job's utility ``fallback`` when it has one, else skipped
                              with code ``window_closed``
  anyone else                 sent as usual
"""

from __future__ import annotations

import msgspec

from services.consumer.ledger import Skip
from shared import suppressions, window
from shared.models import Chunk
from shared.scripts import Scripts

_SUPPRESSED = "the person is on the page's suppression list"
_CLOSED = "no interaction from the person in the last 24 hours"


class Screened(msgspec.Struct):
    skipped: list[Skip]  # by position in the job
    fallback: list[int]  # indexes in the chunk to send the fallback to

    def skipped_indexes(self, start: int) -> set[int]:
        return {s.pos - start for s in self.skipped}


NOTHING = Screened([], [])


async def screen(
    scripts: Scripts,
    page_id: str,
    chunk: Chunk,
    *,
    require_window: bool,
    suppress: bool,
    has_fallback: bool,
) -> Screened:
    ids = chunk.ids
    if not (require_window or suppress) or not ids:
        return NOTHING
    keys_ = [suppressions.key_of(page_id, psid) for psid in ids]
    if require_window:
        keys_ += [key for psid in ids for key in window.bucket_keys(page_id, psid)]
    tiers = len(window.TIERS) if require_window else 0
    args = [len(ids), tiers, window.WINDOW_S, "1" if suppress else "0", *ids]
    raw = await scripts.screen(keys=keys_, args=args)
    verdicts = raw.decode() if isinstance(raw, bytes) else str(raw)
    skipped: list[Skip] = []
    fallback: list[int] = []
    for i, verdict in enumerate(verdicts):
        if verdict == "s":
            skipped.append(Skip(chunk.start + i, ids[i], "suppressed", _SUPPRESSED))
        elif verdict == "c" and has_fallback:
            fallback.append(i)
        elif verdict == "c":
            skipped.append(Skip(chunk.start + i, ids[i], "window_closed", _CLOSED))
    return Screened(skipped, fallback)
