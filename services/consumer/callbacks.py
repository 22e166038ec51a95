"""Completion callbacks: POST the job view to a job's ``callback_url`` once the job has ended.

The scripts that end a job add ``job <id>`` to its shard's callbacks stream. Every consumer
runs one ``CallbackSender``, a kind of work of the stream engine (services/consumer/engine.py:
group "callbacks", BLOCK ≤ 2 s, at most MAX_IN_FLIGHT in progress, leases renewed while a
retry waits minutes, XAUTOCLAIM of entries idle past ``claim_idle_ms``, an entry taken over by
another consumer cancelled here, and at shutdown every entry handed back at once). Per entry:
load the job view → check the target again (DNS rebinding) and connect to the address checked
→ POST, signed when the tenant has a key → on anything but 2xx, full-jitter backoff and again,
up to FANOUT_CALLBACK_ATTEMPTS (a refused target fails at once) → record the outcome on the job
and XACK + XDEL the entry in one script.

The job hash shows ``callback_status`` (``delivered`` | ``failed``), ``callback_attempts`` and
``callback_error``. Attempts are recorded as they happen, so a consumer taking over a dead one's
entry resumes the count instead of starting again, and an entry whose outcome was recorded
just before a crash is only acknowledged. Delivery is at least once.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import httpx
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.consumer.engine import HAND_BACK_IDLE_MS, Engine, Entry
from shared import callbacks, jobview, keys
from shared.classify import backoff
from shared.models import json_encode
from shared.scripts import Scripts
from shared.settings import ConsumerSettings

T = TypeVar("T")
log = logging.getLogger("fanout.consumer")

MAX_IN_FLIGHT = 64  # callbacks in progress (posting or waiting to retry) per consumer
_BLOCK_MS_MAX = 2_000
_BACKOFF_CAP_S = 300.0
_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_REQUEST_DEADLINE_S = 30.0  # the whole request, however slowly the receiver trickles
_ERROR_MAX = 200
# A blip (a restart, a failover, a pooled connection that died with the server) is retried
# within the callback, about 6 s in all; past that the entry waits for takeover.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
_REDIS_TRIES = 5
_SETTLE_WAIT_S = 10.0  # at shutdown, for outcomes being recorded

# Record a callback's progress on its job, never recreating a hash the retention sweep has
# removed, and settle the stream entry with it when the outcome is final: one step, so a crash
# cannot leave an acknowledged entry without its outcome.
# KEYS: 1 job hash, 2 shard callbacks stream
# ARGV: 1 group, 2 entry id ('' keeps the entry pending), 3.. field, value pairs
_RECORD = """
if #ARGV > 2 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
end
return 1
"""

Key = tuple[str, bytes]  # (stream, entry id): ids are unique per stream only
_Replies = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]]


class _Attempt:
    """One POST's result: error is None on a 2xx; final means do not retry."""

    __slots__ = ("error", "final", "retry_after")

    def __init__(
        self, error: str | None, *, final: bool = False, retry_after: float | None = None
    ) -> None:
        self.error = error
        self.final = final
        self.retry_after = retry_after


class CallbackSender:
    name = "callbacks"
    group = keys.CALLBACK_GROUP

    def __init__(
        self,
        redis: Redis,
        settings: ConsumerSettings,
        *,
        base_delay_s: float = 1.0,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.base_delay_s = base_delay_s
        self.claim_idle_ms = claim_idle_ms
        self.name = settings.consumer_name
        self.streams = [keys.callbacks(shard) for shard in range(settings.shards)]
        self.scripts = Scripts(redis)
        self._record = redis.register_script(_RECORD)
        # No proxies from the environment: a proxy would connect to a host we never checked.
        # No keep-alive: each POST goes to an address just checked, with its own TLS session.
        self.client = httpx.AsyncClient(
            timeout=_TIMEOUT,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=0),
        )
        self._settling: set[asyncio.Task[None]] = set()
        self._unsigned_warned: set[str] = set()
        self.engine = Engine(
            redis,
            self.scripts,
            self,
            self.name,
            claim_idle_ms=claim_idle_ms,
            block_ms=min(settings.block_ms, _BLOCK_MS_MAX),
            drain_s=0.0,  # a callback may wait minutes for its retry: hand it back at once
            cancel_lost=True,  # another consumer took it over: do not POST it twice
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver callbacks until cancelled. Callbacks in progress then stop; their entries
        are handed back for immediate takeover (the attempts made so far are recorded)."""
        log.info("callback sender started", extra={"consumer": self.name})
        await self.engine.run()

    async def close(self) -> None:
        """Close the HTTP client (after run() has been cancelled)."""
        await self.client.aclose()

    # --- the engine's Kind ------------------------------------------------------------------

    def room(self, held: int) -> int:
        return MAX_IN_FLIGHT - held

    async def handle(self, entry: Entry) -> None:
        job_id = entry.fields.get(b"job", b"").decode("utf-8", "replace")
        key = (entry.stream, entry.entry_id)
        try:
            await self._deliver(key, job_id)
        except (RedisError, OSError):
            raise  # left pending: the lease lapses and someone (maybe us) takes it over
        except Exception as exc:
            log.exception("callback failed unexpectedly", extra={"job_id": job_id})
            await self._give_up(key, job_id, f"internal error: {type(exc).__name__}")

    async def hand_back(self, entries: list[Entry]) -> None:
        if self._settling:  # shielded from the cancellation: let them land
            await asyncio.wait(self._settling, timeout=_SETTLE_WAIT_S)
        try:
            await self.engine.lease(entries, HAND_BACK_IDLE_MS)
        except (RedisError, OSError) as exc:
            log.warning(
                "callback hand back failed; entries wait for the lease", extra={"error": str(exc)}
            )

    def taken_over(self, entry: Entry) -> None:
        pass  # the engine logs it

    def deleted(self, stream: str, ids: list[bytes]) -> None:
        pass  # the engine logs it

    # --- one callback ---------------------------------------------------------------------

    async def _deliver(self, entry: Key, job_id: str) -> None:
        loaded = await _retrying(lambda: jobview.load(self.redis, job_id))
        url = loaded[1].callback_url if loaded is not None else None
        if loaded is None or url is None:
            log.info(
                "callback dropped: the job is gone or has no callback_url",
                extra={"job_id": job_id},
            )
            await self._settle(entry, None, {})
            return
        tenant, view = loaded
        job = keys.JobKeys.of(job_id)
        status, done, last_error = cast(
            list[bytes | None],
            await _retrying(
                lambda: self.redis.hmget(
                    job.hash, ["callback_status", "callback_attempts", "callback_error"]
                )
            ),
        )
        if status in (b"delivered", b"failed"):  # recorded just before a crash
            await self._settle(entry, job, {})
            return
        attempts = int(done or 0)
        error = (last_error or b"").decode("utf-8", "replace") or "no attempts left"
        body = json_encode(view)
        headers = self._headers(tenant, job_id, body)
        while attempts < self.settings.callback_attempts:
            attempts += 1
            result = await self._post(url, body, headers)
            if result.error is None:
                await self._settle(entry, job, _fields("delivered", attempts, ""))
                log.info("callback delivered", extra={"job_id": job_id, "attempts": attempts})
                return
            error = result.error
            if result.final or attempts >= self.settings.callback_attempts:
                break
            await self._progress(entry, job, attempts, error)
            delay = backoff(
                attempts, base=self.base_delay_s, cap=_BACKOFF_CAP_S, retry_after=result.retry_after
            )
            log.info(
                "callback failed; will retry",
                extra={"job_id": job_id, "attempts": attempts, "error": error, "delay_s": delay},
            )
            await asyncio.sleep(delay)
        await self._settle(entry, job, _fields("failed", attempts, error))
        log.warning(
            "callback failed", extra={"job_id": job_id, "attempts": attempts, "error": error}
        )

    def _headers(self, tenant: str, job_id: str, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fanout",
            callbacks.JOB_HEADER: job_id,
        }
        secret = self.settings.callback_secrets.get(tenant)
        if secret is not None:
            headers[callbacks.SIGNATURE_HEADER] = callbacks.sign(secret.reveal(), body)
        elif tenant not in self._unsigned_warned:
            self._unsigned_warned.add(tenant)
            log.warning(
                "callbacks of this tenant go unsigned: no FANOUT_CALLBACK_SECRETS entry",
                extra={"tenant": tenant, "job_id": job_id},
            )
        return headers

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> _Attempt:
        try:
            target = await asyncio.to_thread(
                callbacks.resolve_target, url, self.settings.callback_allow
            )
        except ValueError as exc:
            return _Attempt(_short(str(exc)), final=True)
        headers = {**headers, "Host": target.host_header}
        extensions = {"sni_hostname": target.host} if target.is_name else {}
        error = "no address"
        for address in target.addresses:  # the next one only when a connection is refused
            try:
                async with (
                    asyncio.timeout(_REQUEST_DEADLINE_S),
                    self.client.stream(
                        "POST",
                        target.pinned(address),
                        content=body,
                        headers=headers,
                        extensions=extensions,
                    ) as response,
                ):
                    # The answer's body is not read: only its status matters.
                    if response.is_success:
                        return _Attempt(None)
                    return _Attempt(
                        f"HTTP {response.status_code}",
                        retry_after=_retry_after(response.headers.get("Retry-After")),
                    )
            except httpx.ConnectError as exc:
                error = _describe(exc)
            except (httpx.HTTPError, TimeoutError) as exc:
                return _Attempt(_describe(exc))
        return _Attempt(error)

    async def _settle(
        self, entry: Key, job: keys.JobKeys | None, fields: dict[str, str | int]
    ) -> None:
        """Record the outcome (if any) and XACK + XDEL the entry, shielded from cancellation."""
        stream, entry_id = entry
        record_keys = [job.hash if job is not None else stream, stream]
        args = [keys.CALLBACK_GROUP, entry_id, *_flat(fields)]

        async def record() -> None:
            await _retrying(lambda: self._record(keys=record_keys, args=args))

        task = asyncio.create_task(record())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _progress(self, entry: Key, job: keys.JobKeys, attempts: int, error: str) -> None:
        """Record the attempts so far; the entry stays pending and a takeover resumes here."""
        args = [keys.CALLBACK_GROUP, "", *_flat(_fields(None, attempts, error))]
        await _retrying(lambda: self._record(keys=[job.hash, entry[0]], args=args))

    async def _give_up(self, entry: Key, job_id: str, error: str) -> None:
        job = keys.JobKeys.of(job_id) if keys.shard_of(job_id) is not None else None
        try:
            fields: dict[str, str | int] = {"callback_status": "failed", "callback_error": error}
            await self._settle(entry, job, fields if job is not None else {})
        except (RedisError, OSError) as exc:
            log.warning("callback left for takeover", extra={"job_id": job_id, "error": str(exc)})


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again after a short backoff when Redis is briefly unreachable."""
    delay_s = 0.2
    for _ in range(_REDIS_TRIES - 1):
        try:
            return await call()
        except _TRANSIENT as exc:
            log.info("redis call failed; retrying", extra={"error": str(exc)})
            await asyncio.sleep(delay_s)
            delay_s *= 2
    return await call()


def _fields(status: str | None, attempts: int, error: str) -> dict[str, str | int]:
    fields: dict[str, str | int] = {"callback_attempts": attempts, "callback_error": error}
    if status is not None:
        fields["callback_status"] = status
    return fields


def _flat(fields: dict[str, str | int]) -> list[str | int]:
    return [item for pair in fields.items() for item in pair]


def _short(text: str) -> str:
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 1] + "…"


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return _short(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
