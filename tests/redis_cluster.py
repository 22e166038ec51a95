"""A real Redis Cluster on loopback (3 masters + 3 replicas, each a redis-server process) and
the fanout stack on it, for tests/test_cluster.py and scripts/soak-failover."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import redis
from conftest import Stack, wait_for
from redis.cluster import RedisCluster


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """Six redis-server processes made into a cluster with redis-cli --cluster create."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_cluster_port() for _ in range(6)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        for port in self.ports:
            folder = workdir / str(port)
            folder.mkdir()
            self.procs[port] = subprocess.Popen(
                [
                    *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "1500"),
                    *("--cluster-config-file", "nodes.conf", "--save", "", "--dir", str(folder)),
                    *("--appendonly", "yes", "--appendfsync", "everysec"),
                ],
                stdout=subprocess.DEVNULL,
            )
        self.nodes = {port: redis.Redis(host="127.0.0.1", port=port) for port in self.ports}
        try:
            self._create()
        except BaseException:
            for proc in self.procs.values():  # nobody else would stop them
                proc.kill()
                proc.wait()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.client = RedisCluster(host="127.0.0.1", port=self.ports[0])

    def _create(self) -> None:
        for port in self.ports:
            wait_for(self.nodes[port].ping, 10, f"node {port}")
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{p}" for p in self.ports),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.healthy, 30, "the cluster to be ok")
        wait_for(self.replicas_in_sync, 30, "every replica to sync with its master")

    def healthy(self) -> bool:
        alive = [p for p in self.ports if self.procs[p].poll() is None]
        return all(
            b"cluster_state:ok" in self.nodes[p].execute_command("CLUSTER", "INFO") for p in alive
        )

    def replicas_in_sync(self) -> bool:
        """Three replicas with their link to the master up: only then can one take over."""
        up = 0
        for port, node in self.nodes.items():
            if self.procs[port].poll() is None:
                info = node.info("replication")
                up += info["role"] == "slave" and info.get("master_link_status") == "up"
        return up == 3

    def serving_port_of(self, key: str) -> int | None:
        """The live master serving ``key``'s slot, as a surviving node sees the cluster."""
        live = next(n for p, n in self.nodes.items() if self.procs[p].poll() is None)
        slot = int(live.execute_command("CLUSTER", "KEYSLOT", key))
        for line in live.execute_command("CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        return None

    def master_port_of(self, key: str) -> int:
        node = self.client.get_node_from_key(key)
        return int(node.port)

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait()

    def stop(self) -> None:
        self.client.close()
        for node in self.nodes.values():
            node.close()
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


class ClusterStack(Stack):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        holder: Any = type("Holder", (), {})()
        holder.url, holder.client, holder.workdir = cluster.url, cluster.client, cluster.workdir
        super().__init__(holder)
        self.env["FANOUT_SHARDS"] = "4"
