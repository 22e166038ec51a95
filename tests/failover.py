"""One failover, measured: a 3+3 Redis Cluster, a producer, two consumers and fakegraph; a job
under way on a shard of one master; that master killed with kill -9.

Figures, in seconds from the promotion of its replica (as a surviving node sees it):
- producer: until the last failed probe of POST /v1/jobs (a job pinned by Idempotency-Key to
  the victim's shard), GET /v1/jobs/{id} (the running job) and GET /readyz, in turn, by
  three clients at once, each pausing 0.1 s between rounds; a probe that fails counts at its
  end, so a hung request counts in full;
- consumers: until fakegraph receives the next message (only the victim's shard has work, so
  every message it receives is that shard's consumers delivering again).
- a producer started after the promotion (the URL's first node is then dead when the victim is
  it; the URL names the three masters): from its start until it answers all three probes.
Then the job is let finish, and its counters must add up: sent + failed + skipped == total,
and the recipients fakegraph received equal the job's sent count (nobody lost).

Used once per case by tests/test_cluster.py and ten times in a row by scripts/soak-failover:
``.venv/bin/python tests/failover.py --runs 10``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from conftest import Proc, free_port, psids, wait_for
from redis_cluster import Cluster, ClusterStack

from services.producer.jobs import shard_for
from shared import keys

LIMIT_S = 10.0
SHARDS = 4
TOTAL = 20_000  # long enough (at 50 ms per answer) to outlast the failover
PROBE_PSID_OFFSET = 5_000_000
PROBERS = 3  # concurrent requests: one alone missed a redis-py race that several hit
STEADY_S = 2.0  # the producer has recovered once its probes pass for this long
DEADLINE_S = 25.0  # after the promotion, give up waiting for recovery


@dataclass
class Probes:
    """Results of the prober thread: per probe name, the failures' times and successes."""

    failures: dict[str, list[float]] = field(default_factory=dict)
    last_ok: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    probe_job: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, at: float, status: int) -> None:
        with self.lock:
            self._record(name, at, status)

    def _record(self, name: str, at: float, status: int) -> None:
        counts = self.statuses.setdefault(name, {})
        counts[status] = counts.get(status, 0) + 1
        if 200 <= status < 300:
            self.last_ok[name] = at
        else:
            self.failures.setdefault(name, []).append(at)

    def last_failure(self, name: str) -> float:
        return max(self.failures.get(name, [0.0]))

    def steady_since(self, now: float) -> bool:
        last_bad = max((self.last_failure(n) for n in self.statuses), default=0.0)
        return now - last_bad >= STEADY_S and all(
            self.last_ok.get(n, 0.0) > last_bad for n in self.statuses
        )


@dataclass
class RunResult:
    victim: int
    url_node: bool
    promotion_s: float
    producer_s: dict[str, float]
    consumers_s: float
    late_start_s: float
    server_errors: int  # answers 5xx other than 503 `unavailable`: bugs
    counters_ok: bool
    detail: str

    @property
    def worst_s(self) -> float:
        return max(self.consumers_s, self.late_start_s, *self.producer_s.values())

    @property
    def ok(self) -> bool:
        return self.counters_ok and not self.server_errors and self.worst_s <= LIMIT_S

    def line(self) -> str:
        producer = " ".join(f"{n} {s:.1f}s" for n, s in self.producer_s.items())
        where = "the FANOUT_REDIS_URL node" if self.url_node else "another master"
        return (
            f"killed :{self.victim} ({where}); promoted {self.promotion_s:.1f}s after the kill;"
            f" from the promotion: producer {producer}; consumers {self.consumers_s:.1f}s;"
            f" a producer started after it serves in {self.late_start_s:.1f}s;"
            f" {self.server_errors} answers 5xx other than 503;"
            f" counters {'add up' if self.counters_ok else 'WRONG'} ({self.detail})"
        )


def _probe(client: httpx.Client, name: str, request: httpx.Request, probes: Probes) -> None:
    try:
        response = client.send(request)
        status = response.status_code
        if name == "post" and status == 202:
            probes.probe_job = response.json()["job_id"]
    except httpx.HTTPError:
        status = 0
    probes.record(name, time.monotonic(), status)


def _round(api: httpx.Client, job_id: str, key: str, probes: Probes) -> None:
    """One probe of each: a job submitted on the victim's shard, the running job, readiness."""
    body = {
        "page_id": "1001",
        "message": {"text": "probe"},
        "recipients": psids(1, offset=PROBE_PSID_OFFSET),
        "messaging_type": "UPDATE",
    }
    post = api.build_request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
    _probe(api, "post", post, probes)
    _probe(api, "get", api.build_request("GET", f"/v1/jobs/{job_id}"), probes)
    _probe(api, "readyz", api.build_request("GET", "/readyz"), probes)


def _prober(
    api: httpx.Client, job_id: str, key: str, probes: Probes, stop: threading.Event
) -> None:
    while not stop.is_set():
        _round(api, job_id, key, probes)
        stop.wait(0.1)  # the probing period, not a synchronisation


def _key_for_shard(shard: int, prefix: str) -> str:
    """An Idempotency-Key that the producer maps to ``shard``."""
    keys = (f"{prefix}-{n}" for n in range(1000))
    return next(k for k in keys if shard_for("acme", k, SHARDS) == shard)


def _late_start(stack: ClusterStack, job_id: str, key: str, seen: Probes) -> float:
    """Seconds from starting one more producer to its answering every probe with 2xx."""
    started = time.monotonic()
    port = free_port()
    args = ["services.cli", "producer", "--port", str(port)]
    stack.procs.append(Proc(args, stack.env, "producer-late", stack.logdir))
    assert stack.api is not None
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, headers=stack.api.headers, timeout=3)
    try:
        wait_for(lambda: api.get("/healthz").status_code == 200, 15, "the late producer")
        deadline = started + DEADLINE_S
        while time.monotonic() < deadline:
            probes = Probes()
            _round(api, job_id, key, probes)
            seen.probe_job = seen.probe_job or probes.probe_job  # the same job, by its key
            if not probes.failures:
                return time.monotonic() - started
            time.sleep(0.1)  # the probing period, not a synchronisation
        return DEADLINE_S
    finally:
        api.close()


def _masters(cluster: Cluster) -> list[int]:
    """The masters' ports, the FANOUT_REDIS_URL node first when it is one."""
    ports = sorted(int(n.port) for n in cluster.client.get_primaries())
    url_port = cluster.ports[0]
    return sorted(ports, key=lambda p: p != url_port)


def _submit(stack: ClusterStack, recipients: list[str], key: str) -> str:
    assert stack.api is not None
    body = {
        "page_id": "1001",
        "message": {"text": "failover"},
        "recipients": recipients,
        "messaging_type": "UPDATE",
    }
    response = stack.api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _counters(stack: ClusterStack, job_ids: list[str]) -> tuple[bool, str]:
    assert stack.fake is not None
    done = [stack.wait_done(j, 90) for j in job_ids]
    added = all(j["sent"] + j["failed"] + j["skipped"] == j["total"] for j in done)
    completed = all(j["status"] == "completed" for j in done)
    sent = sum(j["sent"] for j in done)
    stats = stack.fake.stats()
    ok = added and completed and stats["unique"] == sent
    detail = (
        f"sent {sent:,} of {sum(j['total'] for j in done):,},"
        f" failed {sum(j['failed'] for j in done)}, received {stats['unique']:,} recipients,"
        f" duplicates {stats['duplicates']}, in doubt {sum(j['indoubt'] for j in done)}"
    )
    return ok, detail


def run_once(workdir: Path, victim_index: int) -> RunResult:
    """One failover: kill the ``victim_index``-th master (0: the FANOUT_REDIS_URL node)."""
    cluster = Cluster(workdir)
    stack = ClusterStack(cluster)
    stack.env["FANOUT_SHARDS"] = str(SHARDS)
    # Every master a seed, the victim among them: a service started while one is dead still
    # finds the cluster (shared/redisconn.py).
    seeds = ",".join(f"127.0.0.1:{port}" for port in _masters(cluster))
    stack.env["FANOUT_REDIS_URL"] = f"redis://{seeds}/0"
    stop = threading.Event()
    try:
        fake = stack.start_fakegraph("--latency-ms", "50")
        api = stack.start_producer()
        for name in ("c1", "c2"):
            stack.start_consumer(name, FANOUT_CONCURRENCY="8")
        masters = _masters(cluster)
        victim = masters[victim_index % len(masters)]
        shard = next(
            s for s in range(SHARDS) if cluster.master_port_of(keys.work_stream(s)) == victim
        )
        key = _key_for_shard(shard, "probe")
        job_id = _submit(stack, psids(TOTAL), _key_for_shard(shard, "job"))
        assert keys.JobKeys.of(job_id).shard == shard, (job_id, shard)
        wait_for(lambda: fake.stats()["delivered"] >= 300, 60, "delivery under way")

        probes = Probes()
        clients = [
            httpx.Client(base_url=api.base_url, headers=api.headers, timeout=3)
            for _ in range(PROBERS)
        ]
        probers = [
            threading.Thread(target=_prober, args=(client, job_id, key, probes, stop))
            for client in clients
        ]
        for prober in probers:
            prober.start()
        killed = time.monotonic()
        cluster.kill(victim)
        job_key = keys.JobKeys.of(job_id).hash
        wait_for(lambda: cluster.serving_port_of(job_key) not in (None, victim), 30, "promotion")
        promoted = time.monotonic()
        before = fake.stats()["delivered"]
        resumed = wait_for(
            lambda: fake.stats()["delivered"] > before and time.monotonic(),
            DEADLINE_S,
            "the consumers to deliver again",
        )
        deadline = promoted + DEADLINE_S
        while not probes.steady_since(time.monotonic()) and time.monotonic() < deadline:
            stop.wait(0.1)
        stop.set()
        for prober, client in zip(probers, clients, strict=True):
            prober.join()
            client.close()
        producer_s = {
            name: max(0.0, probes.last_failure(name) - promoted) for name in probes.statuses
        }
        if not probes.steady_since(time.monotonic()):
            producer_s = {n: max(s, DEADLINE_S) for n, s in producer_s.items()}
        late_start_s = _late_start(stack, job_id, key, probes)
        fake.configure(latency_ms=0)
        jobs = [job_id] + ([probes.probe_job] if probes.probe_job else [])
        counters_ok, detail = _counters(stack, jobs)
        detail += f"; probe answers {probes.statuses}"
        logs = "\n".join(proc.output() for proc in stack.procs if "producer" in proc.name)
        unexpected = [
            line
            for line in logs.splitlines()
            if '"status": 500' in line or "Traceback" in line or "unexpected" in line
        ]
        if unexpected:
            detail += f"; the producer logged {len(unexpected)}: {unexpected[0][-1500:]}"
        return RunResult(
            victim=victim,
            url_node=victim == cluster.ports[0],
            promotion_s=promoted - killed,
            producer_s=producer_s,
            consumers_s=max(0.0, resumed - promoted),
            late_start_s=late_start_s,
            server_errors=sum(
                count
                for answers in probes.statuses.values()
                for status, count in answers.items()
                if status >= 500 and status != 503
            ),
            counters_ok=counters_ok,
            detail=detail,
        )
    except BaseException:
        print(stack.logs()[-8000:], file=sys.stderr)
        raise
    finally:
        stop.set()
        stack.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    results: list[RunResult] = []
    broken = 0
    for run in range(args.runs):
        try:
            with tempfile.TemporaryDirectory(prefix="fanout-failover-") as tmp:
                result = run_once(Path(tmp), run)
        except Exception as exc:  # a run that cannot finish is a failed run, not the end
            broken += 1
            print(f"run {run + 1}/{args.runs}: FAILED: {exc!r}", flush=True)
            continue
        results.append(result)
        print(f"run {run + 1}/{args.runs}: {result.line()}", flush=True)
    bad = broken + sum(not r.ok for r in results)
    if results:
        print(
            f"worst of {len(results)} finished runs: promotion"
            f" {max(r.promotion_s for r in results):.1f}s after the kill; from the promotion,"
            f" producer {max(max(r.producer_s.values()) for r in results):.1f}s, consumers"
            f" {max(r.consumers_s for r in results):.1f}s; a producer started after the kill"
            f" {max(r.late_start_s for r in results):.1f}s from its start"
        )
    print(
        f"{bad} of {args.runs} run(s) failed, took over {LIMIT_S:.0f}s"
        " or left counters that do not add up"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
