"""One way to open a Redis client, with timeouts that fit the consumer's blocking reads, on a
single Redis or a Redis Cluster alike.

Every script touches one slot (a job's keys and its shard's streams share the hash tag
``{shard}``), every read names one stream, and no pipeline carries a script, so the same code
runs on both. ``FANOUT_REDIS_CLUSTER`` says which; ``auto`` asks the server (INFO cluster).
"""

from __future__ import annotations

import logging
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

log = logging.getLogger("fanout.redis")

# XREADGROUP BLOCK (at most 4 s, see settings) must return before the socket times out.
SOCKET_TIMEOUT_S = 10.0
_OPTIONS = {
    "socket_timeout": SOCKET_TIMEOUT_S,
    "socket_connect_timeout": 5.0,
    "decode_responses": False,
}


def connect(url: str) -> Redis:
    """A client for a single Redis (tests and tools that know they talk to one)."""
    return Redis.from_url(url, health_check_interval=30, **_OPTIONS)  # type: ignore[arg-type]


async def is_cluster(url: str) -> bool:
    probe = connect(url)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def open_redis(url: str, cluster: str = "auto") -> Redis:
    """The service's client. A RedisCluster answers the same commands fanout uses, so it is
    handed out under the single-Redis type rather than spreading a union through the code."""
    if cluster == "auto":
        try:
            cluster = "true" if await is_cluster(url) else "false"
        except (RedisError, OSError) as exc:
            # Redis down at start: come up anyway (readiness says not ready) as a single Redis.
            log.warning(
                "could not ask Redis whether it is a cluster; assuming not"
                " (set FANOUT_REDIS_CLUSTER to say)",
                extra={"error": str(exc)},
            )
            cluster = "false"
    if cluster == "true":
        client = RedisCluster.from_url(url, **_OPTIONS)
        await client.initialize()
        return cast(Redis, client)
    return connect(url)


async def replicated(redis: Redis, key: str, timeout_ms: int = 500) -> int:
    """On a cluster, wait until a replica has the writes made so far on ``key``'s master
    (WAIT), so a failover right after cannot lose them; how many replicas acknowledged.
    A single Redis (usually without replicas) is not asked: WAIT would only time out."""
    if not isinstance(redis, RedisCluster):
        return 0
    node = redis.get_node_from_key(key)
    return int(await redis.execute_command("WAIT", 1, timeout_ms, target_nodes=node))
