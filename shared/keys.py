"""Every Redis key, stream and group name fanout uses; nothing else builds key strings.

A job lives on one shard. Its keys and its shard's work stream share the hash tag ``{<shard>}``
so every Lua script touches one slot, on a single Redis or a Redis Cluster alike. The job id
carries its shard, so any service finds a job's keys without a lookup.
"""

from __future__ import annotations

import re
import secrets

import msgspec

GROUP = "senders"
_JOB_ID = re.compile(r"^(\d{1,4})-([0-9a-f]{24})$")


def work_stream(shard: int) -> str:
    return f"fanout:{{{shard}}}:work"


def lease_clock(stream: str) -> str:
    """When leases on ``stream`` were last renewed or taken over (lib.lua lease_clock): beside
    the stream, in its slot."""
    return f"{stream}:leases"


def dead_stream(shard: int) -> str:
    return f"fanout:{{{shard}}}:dead"


def tenant_jobs(tenant: str, shard: int) -> str:
    """The tenant's jobs on one shard, by creation time (per shard, so a job's creation
    touches one slot; listing merges the shards)."""
    return f"fanout:{{{shard}}}:tenant:{tenant}:jobs"


def ended(shard: int) -> str:
    """The shard's ended jobs by finish time: the retention sweeper's to-do list."""
    return f"fanout:{{{shard}}}:ended"


def callbacks(shard: int) -> str:
    """Ended jobs whose completion callback is due (a stream; group CALLBACK_GROUP)."""
    return f"fanout:{{{shard}}}:callbacks"


def scheduled(shard: int) -> str:
    """Jobs held until their send_at, by that time."""
    return f"fanout:{{{shard}}}:scheduled"


def idempotency(shard: int, tenant: str, key: str) -> str:
    return f"fanout:{{{shard}}}:idem:{tenant}:{key}"


CALLBACK_GROUP = "callbacks"


def inbox(shard: int) -> str:
    """Meta's webhook POSTs as received (raw, still signed), for the consumers' group
    INBOX_GROUP; the shard is the page's, so one page's events keep one stream's order."""
    return f"fanout:{{{shard}}}:inbox"


INBOX_GROUP = "events"


def receipts(page_id: str, bucket: int) -> str:
    """One bucket of a page's receipt correlation: packed 16-byte records of the messages sent
    and not yet read (see services/consumer/receipts.py). In the page's slot."""
    return f"fanout:page:{{{page_id}}}:rx:{bucket}"


def receipt_jobs(page_id: str) -> str:
    """The page's job references for receipt records (a small number per job, both ways)."""
    return f"fanout:page:{{{page_id}}}:rxjobs"


def job_stats(shard: int) -> str:
    """How many of the shard's jobs are in each status (for the fanout_jobs gauge)."""
    return f"fanout:{{{shard}}}:jobstats"


def rate(page_id: str) -> str:
    return f"fanout:rate:{{{page_id}}}"


def media_rate(page_id: str) -> str:
    """Audio and video permits of a page, beside (and in the slot of) its page limit."""
    return f"fanout:rate:{{{page_id}}}:media"


def rate_log(page_id: str) -> str:
    """A strict sender's recent sends (a zset, send time ms; WhatsApp numbers): no more than
    its rate in any second (services/consumer/pairs.py). In the slot of its rate key."""
    return f"fanout:rate:{{{page_id}}}:sent"


def page_state(page_id: str) -> str:
    """A page's state across the fleet that outlives a job: ``restricted`` (Meta's 10/1893063)
    with its reason and time. In the slot of the page's rate key."""
    return f"fanout:page:{{{page_id}}}:state"


def page_jobs(page_id: str) -> str:
    """The page's jobs by creation time (a zset), so a restriction can pause every one of them
    although they live on different shards. In the slot of the page's rate key."""
    return f"fanout:page:{{{page_id}}}:jobs"


def window_bucket(page_id: str, bucket: int) -> str:
    """One of a page's window buckets: a small hash PSID -> last interaction (unix seconds),
    kept small enough for Redis's listpack encoding (see shared/window.py)."""
    return f"fanout:page:{{{page_id}}}:win:{bucket}"


def window_heard(page_id: str) -> str:
    """When the page's webhooks started flowing (``first``) and the newest event (``last``)."""
    return f"fanout:page:{{{page_id}}}:heard"


def suppressions(page_id: str, bucket: int) -> str:
    """One bucket of the page's suppressed PSIDs: a small hash PSID -> "time_ms code" (see
    shared/suppressions.py)."""
    return f"fanout:page:{{{page_id}}}:supp:{bucket}"


def wa_displays() -> str:
    """WhatsApp numbers by display number (a hash display digits -> phone_number_id), learned
    from webhook metadata: Meta's quality events name a number only by its display number."""
    return "fanout:wa:displays"


def wa_pair(number: str, to: str) -> str:
    """WhatsApp's pair limit: held while a message from the number to the person ``to`` is in
    flight or within the pair interval of its answer (services/consumer/pairs.py). In the
    number's slot."""
    return f"fanout:wa:{{{number}}}:pair:{to}"


def wa_reached(portfolio: str) -> str:
    """The people a business portfolio reached outside a service window (a zset: digits -> ms
    of the latest such send); its messaging tier caps how many within a moving 24 h
    (services/consumer/reach.py). A number in no portfolio is its own (named by its id)."""
    return f"fanout:wa:{{{portfolio}}}:reached"


def new_job_id(shard: int) -> str:
    return f"{shard}-{secrets.token_hex(12)}"


def shard_of(job_id: str) -> int | None:
    """The shard a job id names, or None when the text is not a job id at all."""
    match = _JOB_ID.match(job_id)
    return int(match.group(1)) if match else None


class JobKeys(msgspec.Struct, frozen=True):
    job_id: str
    shard: int
    hash: str  # spec + counters
    backlog: str  # list of encoded chunks not yet released to the fleet
    attempted: str  # ledger bitmaps, bit i = recipient position i
    sent: str
    failed: str
    indoubt: str
    skipped: str  # recipients skipped at dispatch with a reason (outside the window, suppressed)
    fallback: str  # recipients outside the window sent the job's utility fallback instead
    errors: str  # capped stream of failure records
    skips: str  # capped stream of recipients skipped with a reason, as errors lists failures
    stats: str  # the shard's job counts by status
    ended: str  # the shard's ended jobs
    callbacks: str  # the shard's due completion callbacks
    scheduled: str  # the shard's jobs waiting for send_at
    work: str  # the shard's work stream
    dead: str  # the shard's dead-letter stream
    delivered: str  # receipt bitmaps, bit i = recipient position i (Meta's watermarks)
    read: str
    upload: str  # lease of the consumer uploading the job's attachment (expires by itself)
    # sent/failed per second for the last hour (a ring of 3,600 fields) and per minute over
    # the job's life: the job page's chart (record_answers.lua, services/producer/series.py)
    series: str = ""
    # WhatsApp: recipients a ``failed`` status webhook was received for (the send was accepted,
    # so not a ledger failure); the job's ``undelivered`` counts those not also delivered
    undelivered: str = ""

    @classmethod
    def of(cls, job_id: str) -> JobKeys:
        shard = shard_of(job_id)
        if shard is None:
            raise ValueError(f"not a job id: {job_id!r}")
        base = f"fanout:{{{shard}}}:job:{job_id}"
        return cls(
            job_id=job_id,
            shard=shard,
            hash=base,
            backlog=f"{base}:backlog",
            attempted=f"{base}:attempted",
            sent=f"{base}:sent",
            failed=f"{base}:failed",
            indoubt=f"{base}:indoubt",
            skipped=f"{base}:skipped",
            fallback=f"{base}:fallback",
            errors=f"{base}:errors",
            skips=f"{base}:skips",
            stats=job_stats(shard),
            ended=ended(shard),
            callbacks=callbacks(shard),
            scheduled=scheduled(shard),
            work=work_stream(shard),
            dead=dead_stream(shard),
            delivered=f"{base}:delivered",
            read=f"{base}:read",
            undelivered=f"{base}:undelivered",
            upload=f"{base}:upload",
            series=f"{base}:series",
        )
