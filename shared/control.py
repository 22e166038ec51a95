"""Job control, from whoever asks (the API, or a consumer meeting a fatal provider answer):
pause, resume, and stop (failed or cancelled), each one Lua call on the job's shard; and
pausing every job of a page Meta restricted (one call on the page's slot, then one per job)."""

from __future__ import annotations

from shared import keys
from shared.scripts import Scripts


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


async def pause(scripts: Scripts, k: keys.JobKeys, reason: str = "") -> str:
    return _text(await scripts.pause_job(keys=[k.hash, k.stats], args=[reason]))


async def pause_page(scripts: Scripts, page_id: str, reason: str) -> list[tuple[str, str]]:
    """Meta restricted the page: mark it (its permits stop fleet-wide, new jobs are refused)
    and pause each of its jobs with the reason. Idempotent: a second consumer meeting the same
    answer changes nothing. Returns (job id, status after) per listed job."""
    reply = await scripts.page_restrict(
        keys=[keys.page_state(page_id), keys.page_jobs(page_id)], args=[reason]
    )
    paused: list[tuple[str, str]] = []
    for raw in reply[1:]:
        job_id = _text(raw)
        if keys.shard_of(job_id) is not None:
            paused.append((job_id, await pause(scripts, keys.JobKeys.of(job_id), reason)))
    return paused


async def resume(scripts: Scripts, k: keys.JobKeys, window: int) -> str:
    reply = await scripts.resume_job(
        keys=[k.hash, k.backlog, k.work, k.stats, k.ended, k.callbacks], args=[window, k.job_id]
    )
    return _text(reply)


async def stop_job(scripts: Scripts, k: keys.JobKeys, status: str, reason: str) -> bool:
    """Fail or cancel a job fleet-wide; False when it had already ended."""
    reply = await scripts.fail_job(
        keys=[k.hash, k.backlog, k.stats, k.ended, k.callbacks], args=[status, reason, k.job_id]
    )
    return bool(reply)
