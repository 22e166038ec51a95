"""The same code on a real Redis Cluster on loopback: 3 masters + 3 replicas, jobs spread over
the shards, and a master killed (kill -9) mid-job while its replica takes over."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import failover
import pytest
from conftest import Stack, psids, wait_for
from redis_cluster import Cluster, ClusterStack

from shared import keys
from shared.redisconn import ClusterUnavailable, open_redis, seed_urls

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli is needed to create a cluster"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


def delivered_once(stack: Stack, total: int) -> dict[str, Any]:
    assert stack.fake is not None
    stats = stack.fake.stats()
    assert stats["unique"] == total, stats  # nobody lost
    return stats


def test_jobs_across_all_shards_with_two_consumers(cluster: Cluster) -> None:
    stack = ClusterStack(cluster)
    try:
        stack.start_fakegraph()
        stack.start_producer()
        stack.start_consumer("c1")
        stack.start_consumer("c2")
        jobs = [stack.submit(psids(1500, offset=i * 10_000)) for i in range(6)]
        shards = {keys.JobKeys.of(j).shard for j in jobs}
        masters = {cluster.master_port_of(keys.work_stream(s)) for s in range(4)}
        for job_id in jobs:
            job = stack.wait_done(job_id, 60)
            assert job["status"] == "completed" and job["sent"] == 1500
        stats = delivered_once(stack, 9000)
        assert stats["duplicates"] == 0
        print(f"\ncluster: 6 jobs on shards {sorted(shards)}, streams on {len(masters)} masters")
    finally:
        stack.stop()


def test_master_killed_mid_job_replica_takes_over(cluster: Cluster) -> None:
    stack = ClusterStack(cluster)
    try:
        stack.start_fakegraph("--latency-ms", "20")
        stack.start_producer()
        stack.start_consumer("c1", FANOUT_CONCURRENCY="64")
        stack.start_consumer("c2", FANOUT_CONCURRENCY="64")
        total = 4 * 2500
        jobs = [stack.submit(psids(2500, offset=i * 10_000)) for i in range(4)]
        victim_job = jobs[0]
        victim = cluster.master_port_of(keys.JobKeys.of(victim_job).hash)
        wait_for(lambda: stack.job(victim_job)["sent"] >= 500, 60, "delivery under way")
        started = time.monotonic()
        cluster.kill(victim)
        key = keys.JobKeys.of(victim_job).hash
        wait_for(lambda: cluster.serving_port_of(key) not in (None, victim), 30, "a new master")
        failover_s = time.monotonic() - started
        try:
            done = [stack.wait_done(job_id, 60) for job_id in jobs]
        except AssertionError:
            print(stack.logs()[-6000:])
            print([stack.job(j) for j in jobs])
            raise
        assert all(j["status"] == "completed" for j in done), done
        assert sum(j["sent"] for j in done) == total
        stats = delivered_once(stack, total)
        indoubt = sum(j["indoubt"] for j in done)
        assert '"status": 500' not in stack.logs() and "unexpected error" not in stack.logs()
        print(
            f"\nfailover: master :{victim} killed, replica promoted in {failover_s:.1f}s; "
            f"delivered {stats['delivered']:,} for {total:,} recipients: "
            f"duplicates {stats['duplicates']}, counted in doubt {indoubt}"
        )
    finally:
        stack.stop()


def test_a_url_names_one_node_or_several() -> None:
    assert seed_urls("redis://127.0.0.1:7000/0") == ["redis://127.0.0.1:7000/0"]
    assert seed_urls("redis://:pw@h1:7000, h2:7001/0?ssl_cert_reqs=none") == [
        "redis://:pw@h1:7000/0?ssl_cert_reqs=none",
        "redis://:pw@h2:7001/0?ssl_cert_reqs=none",
    ]
    assert seed_urls("unix:///run/redis.sock") == ["unix:///run/redis.sock"]


def test_a_cluster_client_comes_up_when_no_node_answers() -> None:
    """Started while every node it names is down, it answers a RedisError (503), not a crash
    or a RedisClusterException that every `except RedisError` would miss."""

    async def main() -> None:
        redis = await open_redis("redis://127.0.0.1:1,127.0.0.1:2/0", "auto")
        try:
            with pytest.raises(ClusterUnavailable):
                await redis.ping()
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_a_script_runs_on_its_master_while_another_master_is_down(cluster: Cluster) -> None:
    """A master whose script cache is empty (as a promoted replica's is) runs the script at
    once, though another master is dead and not yet replaced: redis-py's SCRIPT LOAD goes to
    every primary and would fail on the dead one."""
    live, dead = sorted(int(n.port) for n in cluster.client.get_primaries())[:2]
    key = next(f"k{i}" for i in range(10_000) if cluster.master_port_of(f"k{i}") == live)

    async def main() -> tuple[int, float]:
        redis = await open_redis(cluster.url, "true")
        try:
            script = redis.register_script("return redis.call('INCR', KEYS[1])")
            assert await script(keys=[key]) == 1
            cluster.kill(dead)
            cluster.nodes[live].script_flush()
            started = time.monotonic()
            value = int(await script(keys=[key]))
            return value, time.monotonic() - started
        finally:
            await redis.aclose()

    value, took = asyncio.run(main())
    print(f"\nscript with an empty cache, a master down: ran in {took * 1000:.0f} ms")
    assert value == 2
    assert took < 1.0  # well inside cluster-node-timeout: the dead master was not replaced yet


@pytest.mark.parametrize("victim", [0, 1], ids=["the-url-node", "another-master"])
def test_failover_serves_again_within_10s(tmp_path: Path, victim: int) -> None:
    """One run of scripts/soak-failover: kill -9 a master mid-job; the producer (and one
    started after the kill) and the consumers serve again within 10 s of the promotion."""
    result = failover.run_once(tmp_path, victim)
    print(f"\nfailover: {result.line()}")
    assert result.counters_ok, result.detail
    assert result.server_errors == 0, result.line()
    assert result.worst_s <= failover.LIMIT_S, result.line()
