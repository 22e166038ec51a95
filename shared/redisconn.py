"""One way to open a Redis client, with timeouts that fit the consumer's blocking reads, on a
single Redis or a Redis Cluster alike.

Every script touches one slot (a job's keys and its shard's streams share the hash tag
``{shard}``), every read names one stream, and no pipeline carries a script, so the same code
runs on both. ``FANOUT_REDIS_CLUSTER`` says which; ``auto`` asks the server (INFO cluster).

Failover (a master killed, its replica promoted). What kept a service failing after the
promotion, each seen on a real 3+3 cluster (``scripts/soak-failover``):

- **Scripts after a promotion.** A promoted replica's script cache is empty (scripts replicate
  as their effects), so the first EVALSHA there answers NOSCRIPT. redis-py then sends SCRIPT
  LOAD to the nodes *it believes* are primaries, and runs EVALSHA again on the slot's node.
  redis-py 7.4 keeps a preserved node's old role on a topology refresh, so the promoted replica
  is never a "primary" to it: SCRIPT LOAD never reaches it and every script on that shard
  (``create_job``: every POST /v1/jobs) answers NOSCRIPT for good (3 of 3 soak runs with redis-py
  7.4.1, which ``redis>=5.2`` allows; 8.1 fixed the roles). Even where redis-py gets the
  roles right, SCRIPT LOAD goes to every primary, so one unreachable master fails a script on
  a healthy one. Here NOSCRIPT is answered with EVAL of the body, routed by the script's keys
  to the one node that runs it (which caches it there), whatever the client thinks of roles.
- **The node named in FANOUT_REDIS_URL.** A service that starts (a restart, a consumer added by
  KEDA while lag grows) while that node is dead could not ask it whether it is a cluster, so it
  fell back to a single-Redis client bound to the dead node: 503 and a ConnectionError on every
  request, for as long as it ran; with ``FANOUT_REDIS_CLUSTER=true`` it did not start at all.
  The URL may now name several nodes, ``redis://h1:6379,h2:6379/0``: any one that answers tells
  what Redis is, all seed the cluster client (which then follows the topology it finds), a
  cluster client that no seed answers comes up anyway and connects on first use (readiness
  false until then), and several nodes named means a cluster.
- **Errors that are not RedisErrors** went past every ``except RedisError``: a 500 from the
  producer in the failover window, in 3 of 10 soak runs. The one traced was the RuntimeError
  uvloop raises when redis-py's topology refresh closes a socket under a command being sent (the
  command was never sent); redis-py also gives up with SlotNotCoveredError or
  RedisClusterException, which are not RedisErrors either, while a slot has no live master. The
  cluster client raises all of them as ``ClusterUnavailable``, a redis ConnectionError: 503,
  retry. 0 of 10 soak runs answered a 500 since.

A running client re-reads the topology itself (redis-py refreshes on a connection error and
follows MOVED), so once the scripts reach the right node it serves again within a second of
the promotion; until the promotion, commands on the dead master's slots fail fast (503).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.typing import EncodableT, KeyT, ScriptTextT

log = logging.getLogger("fanout.redis")

# XREADGROUP BLOCK (at most 4 s, see settings) must return before the socket times out.
SOCKET_TIMEOUT_S = 10.0
# redis-py 8 caps a pool at 100 connections and answers the 101st concurrent command with
# "Too many connections" (seen: 64 senders cooling a throttled page down at once, each cool-down
# lost). A single Redis gets a blocking pool, so a burst waits for a connection instead; a
# cluster's per-node pools cannot block, so theirs are made large enough not to be reached.
MAX_CONNECTIONS = 512
CLUSTER_MAX_CONNECTIONS = 4096
_OPTIONS = {
    "socket_timeout": SOCKET_TIMEOUT_S,
    "socket_connect_timeout": 5.0,
    "decode_responses": False,
}


class KeyedScript(AsyncScript):
    """EVALSHA; on NOSCRIPT, EVAL of the body on the node the keys route to (see above)."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Any = None,
    ) -> Any:
        target = client if client is not None else self.registered_client
        keys = keys or []
        argv = (*keys, *(args or []))
        try:
            return await target.evalsha(self.sha, len(keys), *argv)
        except NoScriptError:
            # EVAL takes the body as bytes too; redis-py's stubs say str only.
            return await target.eval(cast(str, self.script), len(keys), *argv)


class ClusterUnavailable(RedisConnectionError):
    """The cluster cannot serve the command now (no node reachable, a slot not covered):
    redis-py raises these as RedisClusterException, which is not a RedisError."""


def _unavailable(exc: Exception) -> Exception:
    """``exc`` as the RedisError a caller can handle, when it is a failure of the cluster."""
    if isinstance(exc, RedisClusterException):
        return ClusterUnavailable(str(exc))
    if isinstance(exc, RuntimeError) and "closed" in str(exc):
        # uvloop's answer to a write on a socket that redis-py closed under a command in flight
        # (its topology refresh disconnects every node): the command was never sent.
        return ClusterUnavailable(f"connection closed during a topology refresh: {exc}")
    if isinstance(exc, AttributeError) and _raised_in_redis_connection(exc):
        # redis-py 8.1's same race without uvloop: the refresh set the connection's writer to
        # None under the command ("'NoneType' object has no attribute 'writelines'", a 500 in
        # 2 of 6 failover runs); the command was never sent.
        return ClusterUnavailable(f"connection closed during a topology refresh: {exc}")
    return exc


def _raised_in_redis_connection(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py's connection code (not a bug of ours)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(
        ("redis/asyncio/connection.py", "redis\\asyncio\\connection.py")
    )


class FanoutPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except (RedisClusterException, RuntimeError, AttributeError) as exc:
            raise _unavailable(exc) from exc


class FanoutCluster(RedisCluster):
    """RedisCluster whose registered scripts never depend on SCRIPT LOAD reaching every
    primary, and whose every failure is a RedisError (see the module docstring)."""

    # The override is of the async mixin's method; mypy also sees the sync one beside it.
    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        return KeyedScript(self, script)

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> FanoutCluster:
        try:
            await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except (RedisClusterException, RuntimeError, AttributeError) as exc:
            raise _unavailable(exc) from exc
        return self

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (RedisClusterException, RuntimeError, AttributeError) as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)
        return FanoutPipeline(self)  # type: ignore[abstract]  # as redis-py builds its own


def seed_urls(url: str) -> list[str]:
    """One URL per node named in ``url`` (``redis://:pw@h1:6379,h2:6379/0`` names two)."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [
        urlunsplit(parts._replace(netloc=f"{credentials}{at}{host.strip()}"))
        for host in hosts.split(",")
        if host.strip()
    ]


def connect(url: str) -> Redis:
    """A client for a single Redis (tests and tools that know they talk to one)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
        **_OPTIONS,
    )
    return Redis.from_pool(pool)


async def is_cluster(url: str) -> bool:
    probe = connect(url)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def _detect(seeds: list[str]) -> str:
    """ "true" or "false", from the first seed that answers."""
    error: Exception | None = None
    for seed in seeds:
        try:
            return "true" if await is_cluster(seed) else "false"
        except (RedisError, OSError) as exc:
            error = exc
    if len(seeds) > 1:
        return "true"  # only a cluster is named by several nodes
    # Redis down at start: come up anyway (readiness says not ready) as a single Redis.
    log.warning(
        "could not ask Redis whether it is a cluster; assuming not"
        " (set FANOUT_REDIS_CLUSTER to say, and name several nodes for a cluster)",
        extra={"error": str(error)},
    )
    return "false"


async def _open_cluster(seeds: list[str]) -> FanoutCluster:
    others = [urlsplit(seed) for seed in seeds[1:]]
    startup = [ClusterNode(p.hostname or "127.0.0.1", p.port or 6379) for p in others]
    client = FanoutCluster.from_url(
        seeds[0], startup_nodes=startup, max_connections=CLUSTER_MAX_CONNECTIONS, **_OPTIONS
    )
    try:
        await client.initialize()
    except (RedisError, OSError) as exc:
        # Every command initializes a client that is not yet, from the same seeds.
        log.warning(
            "no node of the Redis Cluster answered; connecting on first use",
            extra={"error": str(exc), "nodes": len(seeds)},
        )
    return cast(FanoutCluster, client)


async def open_redis(url: str, cluster: str = "auto") -> Redis:
    """The service's client. A RedisCluster answers the same commands fanout uses, so it is
    handed out under the single-Redis type rather than spreading a union through the code."""
    seeds = seed_urls(url)
    if cluster == "auto":
        cluster = await _detect(seeds)
    if cluster == "true":
        return cast(Redis, await _open_cluster(seeds))
    return connect(seeds[0])


async def replicated(redis: Redis, key: str, timeout_ms: int = 500) -> int:
    """On a cluster, wait until a replica has the writes made so far on ``key``'s master
    (WAIT), so a failover right after cannot lose them; how many replicas acknowledged.
    A single Redis (usually without replicas) is not asked: WAIT would only time out."""
    if not isinstance(redis, RedisCluster):
        return 0
    try:
        node = redis.get_node_from_key(key)
    except RedisClusterException as exc:  # the slot is not covered (yet)
        raise ClusterUnavailable(str(exc)) from exc
    return int(await redis.execute_command("WAIT", 1, timeout_ms, target_nodes=node))
