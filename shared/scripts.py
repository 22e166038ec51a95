"""The Lua scripts in ``shared/lua/``, read once and registered on a client.

redis-py's registered scripts run EVALSHA and load the body on NOSCRIPT, so a Redis restart or
failover (which empties the script cache) costs one extra round trip, not an error.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _read(name: str) -> str:
    return (resources.files("shared") / "lua" / f"{name}.lua").read_text("utf-8")


def _source(name: str) -> str:
    """A script with the shared functions of lib.lua before it (Lua scripts cannot import)."""
    return _read("lib") + _read(name)


class Scripts:
    def __init__(self, redis: Redis) -> None:
        self.create_job: AsyncScript = redis.register_script(_source("create_job"))
        self.begin_chunk: AsyncScript = redis.register_script(_source("begin_chunk"))
        self.finish_chunk: AsyncScript = redis.register_script(_source("finish_chunk"))
        self.top_up: AsyncScript = redis.register_script(_source("top_up"))
        self.record_answers: AsyncScript = redis.register_script(_source("record_answers"))
        self.skip_recipients: AsyncScript = redis.register_script(_source("skip_recipients"))
        self.screen: AsyncScript = redis.register_script(_read("screen"))
        self.lease: AsyncScript = redis.register_script(_source("lease"))
        self.reclaim: AsyncScript = redis.register_script(_source("reclaim"))
        self.take_permits: AsyncScript = redis.register_script(_source("take_permits"))
        self.upload_lease: AsyncScript = redis.register_script(_source("upload_lease"))
        self.upload_done: AsyncScript = redis.register_script(_source("upload_done"))
        self.cool_down: AsyncScript = redis.register_script(_source("cool_down"))
        self.fail_job: AsyncScript = redis.register_script(_source("fail_job"))
        self.pause_job: AsyncScript = redis.register_script(_source("pause_job"))
        self.resume_job: AsyncScript = redis.register_script(_source("resume_job"))
        self.release_due: AsyncScript = redis.register_script(_source("release_due"))
        self.sweep_job: AsyncScript = redis.register_script(_source("sweep_job"))
        self.forget_consumer: AsyncScript = redis.register_script(_source("forget_consumer"))
        self.breaker: AsyncScript = redis.register_script(_source("breaker"))
        self.page_admit: AsyncScript = redis.register_script(_source("page_admit"))
        self.page_restrict: AsyncScript = redis.register_script(_source("page_restrict"))
        self.settle: AsyncScript = redis.register_script(_read("settle"))
        self.receipt_echo: AsyncScript = redis.register_script(_read("receipt_echo"))
        self.receipt_mark: AsyncScript = redis.register_script(_read("receipt_mark"))
        self.receipt_flip: AsyncScript = redis.register_script(_source("receipt_flip"))
        # WhatsApp's limits at dispatch (services/consumer/pairs.py, reach.py)
        self.pair_permit: AsyncScript = redis.register_script(_read("pair_permit"))
        self.reach_admit: AsyncScript = redis.register_script(_read("reach_admit"))
        self.job_hold: AsyncScript = redis.register_script(_read("job_hold"))
        self.wa_status: AsyncScript = redis.register_script(_source("wa_status"))
