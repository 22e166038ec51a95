"""A job as users see it, built from its hash: the producer's status answers, the SSE events
and the completion callback all show exactly this."""

from __future__ import annotations

import time
from typing import Any, Literal, cast

import msgspec
from redis.asyncio import Redis

from shared import keys, pagestate
from shared.models import JobStatusName, JobView

ENDED = ("completed", "failed", "cancelled")


def _iso(ms: bytes | None) -> str | None:
    return iso_ms(int(ms)) if ms else None


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds, as every answer shows times."""
    seconds = int(ms) / 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(ms) % 1000:03d}Z"


def _active_s(h: dict[str, bytes], started: int, until: int) -> float:
    """Seconds from the start to ``until`` the job was not paused: the time of earlier pauses
    (paused_ms, summed at resume) and of the pause going on (since paused_at) left out."""
    paused = int(h.get("paused_ms") or 0)
    paused_at = int(h.get("paused_at") or 0)
    if paused_at > started:
        paused += max(0, until - paused_at)
    return max(0.001, (until - started - paused) / 1000)


def _progress(h: dict[str, bytes], now_ms: int) -> tuple[float, float | None, float | None]:
    """Share finished, send rate over the time the job was active (sent + failed per second:
    skipped ones were never sent), and seconds to go at that rate while it runs (none while
    paused: it would not be counting down)."""
    total = int(h["total"])
    delivered = int(h["sent"]) + int(h["failed"])
    done = delivered + int(h["skipped"])
    progress = round(done / total, 4) if total else 1.0
    started = h.get("started_at")
    status = h["status"].decode()
    ended = status in ENDED
    if not started or ended:
        end = h.get("finished_at")
        if started and end and int(end) > int(started):
            return progress, round(delivered / _active_s(h, int(started), int(end)), 1), 0.0
        return progress, None, 0.0 if ended else None
    rate = delivered / _active_s(h, int(started), now_ms)
    eta = round((total - done) / rate, 1) if rate > 0 and status == "running" else None
    return progress, round(rate, 1), eta


def _callback_status(raw: bytes | None) -> Literal["delivered", "failed"] | None:
    if raw == b"delivered":
        return "delivered"
    return "failed" if raw == b"failed" else None


def _skipped_reasons(h: dict[str, bytes]) -> dict[str, int]:
    """Code -> count of skipped recipients: the reasons recorded at dispatch, and whoever a
    stopped job did not reach, under the job's status (cancelled, failed)."""
    reasons = {k[5:]: int(v) for k, v in h.items() if k.startswith("skip:")}
    rest = int(h["skipped"]) - sum(reasons.values())
    if rest > 0:
        status = h["status"].decode()
        reasons[status if status in ("cancelled", "failed") else "stopped"] = rest
    return reasons


def _window_rule(raw: bytes | None) -> Literal["require", "ignore"]:
    return "require" if raw == b"require" else "ignore"


def view(job_id: str, h: dict[str, bytes], now_ms: int | None = None) -> JobView:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    progress, rate, eta = _progress(h, now_ms)
    return JobView(
        job_id=job_id,
        status=cast(JobStatusName, h["status"].decode()),
        page_id=h["page_id"].decode(),
        total=int(h["total"]),
        sent=int(h["sent"]),
        failed=int(h["failed"]),
        skipped=int(h["skipped"]),
        indoubt=int(h["indoubt"]),
        progress=progress,
        rate_per_s=rate,
        eta_s=eta,
        created_at=_iso(h.get("created_at")),
        started_at=_iso(h.get("started_at")),
        finished_at=_iso(h.get("finished_at")),
        send_at=_iso(h.get("send_at")),
        messaging_type=h["messaging_type"].decode(),
        tag=h["tag"].decode() or None,
        metadata=msgspec.json.decode(h["metadata"]) if h.get("metadata") else None,
        error_codes={k[5:]: int(v) for k, v in h.items() if k.startswith("code:")},
        reason=h["reason"].decode() if h.get("reason") else None,
        callback_url=h["callback_url"].decode() if h.get("callback_url") else None,
        callback_status=_callback_status(h.get("callback_status")),
        delivered=int(h.get("delivered") or 0),
        read=int(h.get("read") or 0),
        undelivered=int(h.get("undelivered") or 0),
        billable={k[9:]: int(v) for k, v in h.items() if k.startswith("billable:")},
        message_kind=h["kind"].decode() if h.get("kind") else "text",  # none before rich messages
        window=_window_rule(h.get("window_rule")),
        window_default=not h.get("window_asked"),
        suppress=h.get("suppress") != b"0",
        fallback_sent=int(h.get("fallback_sent") or 0),
        skipped_reasons=_skipped_reasons(h),
        max_failure_rate=float(h.get("max_failure_rate") or 0.2),
        auto_paused=bool(h.get("auto_paused")),
        **_channel(h),
        **_hold(h, now_ms),
    )


def _hold(h: dict[str, bytes], now_ms: int) -> dict[str, Any]:
    """A hold a consumer recorded on the job (services/consumer/reach.py: the WhatsApp tier is
    used up), while its time has not passed and the job has not ended."""
    until = int(h.get("hold_until") or 0)
    if until <= now_ms or h["status"].decode() in ENDED:
        return {}
    return {"page_hold": h["hold"].decode(), "hold_until": iso_ms(until)}


def _channel(h: dict[str, bytes]) -> dict[str, Any]:
    """The job's channel (absent: messenger) and, for WhatsApp, its number and tier choice."""
    if h.get("channel") != b"whatsapp":
        return {}
    tier = h.get("tier")
    return {
        "channel": "whatsapp",
        "phone_number_id": h["page_id"].decode(),
        "tier": "spread" if tier == b"spread" else "refuse",
    }


async def load(redis: Redis, job_id: str) -> tuple[str, JobView] | None:
    """(tenant, view) of a job, or None when the text is no job id or the job is gone."""
    if keys.shard_of(job_id) is None:
        return None
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.JobKeys.of(job_id).hash))
    if not raw or b"status" not in raw:
        return None
    h = {k.decode(): v for k, v in raw.items()}
    found = view(job_id, h)
    if found.status not in ENDED:
        found.page_hold = await pagestate.hold(redis, found.page_id) or found.page_hold
    return h["tenant"].decode(), found
