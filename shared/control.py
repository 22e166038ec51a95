"""Job control, from whoever asks (the API, or a consumer meeting a fatal provider answer):
pause, resume, and stop (failed or cancelled), each one Lua call on the job's shard."""

from __future__ import annotations

from shared import keys
from shared.scripts import Scripts


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return value or ""


async def pause(scripts: Scripts, k: keys.JobKeys) -> str:
    return _text(await scripts.pause_job(keys=[k.hash, k.stats]))


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
