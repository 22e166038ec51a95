"""fanout against general job queues (arq, Taskiq), same messages, same machine, same run.

    .venv/bin/python bench/queues.py [--messages 20000] [--concurrency 256]
        [--enqueue-concurrency 64] [--queue-python PATH] [--only fanout,arq,taskiq]

bench-only: pip install arq taskiq taskiq-redis aiohttp
  but not in one command: arq 0.28 declares redis<6, so pip downgrades the project's redis-py
  and then picks taskiq-redis 1.0.9, which does not import with taskiq 0.13. Either
  - into the project's venv, keeping its redis-py 8 (arq then runs outside its declared range;
    it works, given max_connections, see bench/queues_tasks.py):
      .venv/bin/pip install taskiq "taskiq-redis>=1.2" aiohttp
      .venv/bin/pip install --no-deps arq    # its other dependency, click, is there already
  - or the contestants in a venv of their own, on the redis-py 5 arq declares:
      python3.11 -m venv /tmp/qvenv
      /tmp/qvenv/bin/pip install arq "taskiq<0.13" taskiq-redis aiohttp uvloop
    and pass --queue-python /tmp/qvenv/bin/python (fanout itself always runs on this venv).
  The header prints the versions each side ran with.

Starts its own redis-server (free port, no persistence) and fakegraph (no latency), then
delivers the same N messages (one POST each to /v21.0/me/messages) three ways, each timed from
the moment enqueueing starts (enqueueing is part of the user's cost) to fakegraph's
`delivered` reaching N (polled every 10 ms; `POST /_fake/reset` before each run):
  1. fanout: producer + 1 consumer (FANOUT_RATE_LIMIT=0, FANOUT_CONCURRENCY=CONCURRENCY),
     one POST /v1/jobs with N recipients;
  2. arq: one task per message (bench/queues_tasks.py: `async def send(ctx, psid)`, one
     aiohttp session from on_startup), N `enqueue_job` calls from a separate process with
     ENQUEUE_CONCURRENCY in flight (arq has no bulk enqueue: each is WATCH / EXISTS /
     MULTI-PSETEX-ZADD-EXEC), 1 worker process, max_jobs=CONCURRENCY, poll_delay=10 ms,
     keep_result=0;
  3. Taskiq + taskiq_redis.RedisStreamBroker: one task per message (`send_task.kiq(psid)`, one
     XADD each, ENQUEUE_CONCURRENCY in flight), `taskiq worker --workers 1
     --max-async-tasks CONCURRENCY`, shared aiohttp session from a WORKER_STARTUP event.
Every worker and enqueuer runs on uvloop (Taskiq's worker picks it itself; the arq worker is
started on it here) and logs at WARNING (both log every task at INFO by default). The
enqueuers run while their worker does, on the same 2 cores: `after-enq/s` is the delivery rate
once enqueueing was over.

Prints msgs/s for each, fanout / arq and fanout / taskiq, the enqueue time, what fakegraph saw
(delivered, unique, duplicates), Redis commands per message (INFO commandstats, all commands
including those fanout runs inside Lua) and the cores busy during each run, by this script's
processes and by everything else (the VM is shared: another job's load shows there).
Each contestant gets at most --timeout s, all of them together --budget s (a contestant cut
short reports what it delivered by then), so the script ends within about 3 minutes.
No assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delivery import API_TOKEN, PAGE, PAGE_TOKEN, ROOT, commands, free_port, wait

TASKS = ROOT / "bench" / "queues_tasks.py"


@dataclass
class Result:
    name: str
    seconds: float | None = None  # enqueue start -> N delivered; None: did not get there
    enqueue_seconds: float | None = None
    # Once enqueueing was over: (seconds since the start, delivered by then).
    enqueued_at: tuple[float, int] | None = None
    stats: dict[str, object] = field(default_factory=dict)
    commands_per_message: float = 0.0
    # Cores busy on average during the run: the processes this script started (and itself),
    # and everything else on the machine (other people's work skews the figures).
    cpu_ours: float | None = None
    cpu_others: float | None = None
    note: str = ""

    def rate(self, n: int) -> float | None:
        return n / self.seconds if self.seconds else None

    def rate_after_enqueue(self, n: int) -> float | None:
        """Delivery rate from the end of enqueueing to N: the worker without its enqueuer."""
        if not self.seconds or self.enqueued_at is None:
            return None
        at, delivered = self.enqueued_at
        return (n - delivered) / (self.seconds - at) if self.seconds > at else None


class Bench:
    """The servers every run shares, the processes started so far, and the run helpers."""

    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.n: int = args.messages
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_port, self.graph_port = free_port(), free_port()
        self.graph_url = f"http://127.0.0.1:{self.graph_port}"
        self.env = {
            **os.environ,
            "FANOUT_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "FANOUT_API_TOKENS": f"bench={API_TOKEN}",
            "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
            "FANOUT_GRAPH_URL": self.graph_url,
            "FANOUT_CONCURRENCY": str(args.concurrency),
            "FANOUT_RATE_LIMIT": "0",
            "FANOUT_METRICS_PORT": "0",
            "FANOUT_LOG_LEVEL": "WARNING",
            "BENCH_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "BENCH_GRAPH_URL": self.graph_url,
            "BENCH_PAGE_TOKEN": PAGE_TOKEN,
            "BENCH_MAX_JOBS": str(args.concurrency),
        }
        # Every wait for deliveries ends by then, so the script ends within about --budget.
        self.deadline = time.perf_counter() + args.budget
        self.r = redis.Redis(port=self.redis_port)
        self.graph = httpx.Client(base_url=self.graph_url, timeout=10)

    # ---- processes ----

    def start(self, argv: list[str], *, pipes: bool = False) -> subprocess.Popen[bytes]:
        """Start a process in its own group (a worker that forks, Taskiq's, stops whole);
        `pipes`: its stdin and stdout are pipes, else its stdout is discarded."""
        p = subprocess.Popen(
            argv,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
        )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15) -> None:
        """SIGTERM to its process group, SIGKILL to it after `timeout`."""
        for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(grace)
        # Members of its group that outlived it (the group's id stays theirs while they live).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)

    def start_servers(self) -> None:
        self.start(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.tmp,
            ],
        )
        self.start([sys.executable, "-m", "services.fakegraph", "--port", str(self.graph_port)])
        wait(self.r.ping, "redis")
        wait(lambda: self.graph.get("/_fake/stats").status_code == 200, "fakegraph")

    # ---- measuring ----

    def reset(self) -> None:
        self.graph.post("/_fake/reset").raise_for_status()

    def until_delivered(
        self,
        result: Result,
        started: float,
        watch: list[subprocess.Popen[bytes]],
        enqueuer: queue.Queue[str | None] | None = None,
    ) -> None:
        """Set `result.seconds`: from `started` until fakegraph has delivered N (None, and a
        note, on a timeout or a crash). `enqueuer`: the enqueuer's stdout, whose next line (the
        seconds enqueueing took) says enqueueing is over; None: it was over already."""
        deadline = min(started + self.args.timeout, self.deadline)
        cpu = self.cpu()
        delivered, now = 0, 0.0
        while time.perf_counter() < deadline:
            delivered = self.graph.get("/_fake/stats").json()["delivered"]
            now = time.perf_counter() - started
            if enqueuer is None and result.enqueued_at is None:
                result.enqueued_at = (now, delivered)
            elif enqueuer is not None and result.enqueued_at is None:
                try:
                    took = enqueuer.get_nowait()
                except queue.Empty:
                    pass
                else:
                    result.enqueue_seconds = float(took) if took else None
                    result.enqueued_at = (now, delivered)
            if delivered >= self.n:
                result.seconds = now
                break
            if any(p.poll() not in (None, 0) for p in watch):
                result.note = f"a process exited; {delivered:,} delivered in {now:.1f} s"
                break
            time.sleep(0.01)
        else:
            result.note = (
                f"timed out: {delivered:,} delivered in {now:.1f} s, "
                f"~{delivered / now if now else 0:,.0f} msgs/s"
            )
        busy, ours = (b - a for a, b in zip(cpu, self.cpu(), strict=True))
        ticks = os.sysconf("SC_CLK_TCK") * (time.perf_counter() - started)
        result.cpu_ours, result.cpu_others = ours / ticks, max(0, busy - ours) / ticks

    def cpu(self) -> tuple[int, int]:
        """(clock ticks the machine's processes have run, ticks used by this script's
        processes: itself and every process group it started)."""
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        # user + nice + system + steal: not idle, iowait, or irq/softirq time (mostly this
        # script's own loopback traffic, which no process is charged for)
        busy = ticks[0] + ticks[1] + ticks[2] + ticks[7]
        groups = {p.pid for p in self.procs}
        me = str(os.getpid())
        ours = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # from field 3, state
            if pid == me or int(fields[2]) in groups:  # field 5, the process group
                ours += int(fields[11]) + int(fields[12])  # fields 14-15, utime + stime
        return busy, ours

    def settle(self, result: Result, before: tuple[int, int]) -> None:
        """Redis work of the run and what fakegraph saw (read after the workers stopped)."""
        result.commands_per_message = (commands(self.r)[1] - before[1]) / self.n
        result.stats = self.graph.get("/_fake/stats").json()

    # ---- the contestants ----

    def fanout(self) -> Result:
        result = Result("fanout")
        api_port = free_port()
        py = [sys.executable, "-m", "services.cli"]
        producer = self.start([*py, "producer", "--port", str(api_port)])
        consumer = self.start([*py, "consumer"])
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=60,
        )
        try:
            wait(lambda: api.get("/readyz").status_code == 200, "producer")
            wait(lambda: self.r.exists("fanout:{0}:work"), "consumer")
            body = {
                "page_id": PAGE,
                "message": {"text": "Hello"},
                "messaging_type": "UPDATE",
                "recipients": [str(10**12 + i) for i in range(self.n)],
            }
            self.reset()
            before = commands(self.r)
            started = time.perf_counter()
            api.post("/v1/jobs", json=body).raise_for_status()
            result.enqueue_seconds = time.perf_counter() - started
            self.until_delivered(result, started, [producer, consumer])
        finally:
            api.close()
            self.stop(consumer)
            self.stop(producer)
        self.settle(result, before)
        return result

    def job_queue(self, name: str, worker_argv: list[str], ready: Callable[[], object]) -> Result:
        result = Result(name)
        worker = self.start(worker_argv)
        enqueuer: subprocess.Popen[bytes] | None = None
        try:
            wait(lambda: worker.poll() is None and ready(), f"{name} worker", timeout=30)
            enqueuer = self.start(
                [
                    self.args.queue_python,
                    str(TASKS),
                    name,
                    str(self.n),
                    str(self.args.enqueue_concurrency),
                ],
                pipes=True,
            )
            lines = _lines(enqueuer)
            if _next_line(lines, 30) != "ready":
                raise RuntimeError(f"{name} enqueuer did not start")
            self.reset()
            before = commands(self.r)
            assert enqueuer.stdin is not None
            started = time.perf_counter()
            enqueuer.stdin.write(b"go\n")
            enqueuer.stdin.flush()
            self.until_delivered(result, started, [worker, enqueuer], lines)
        finally:
            if enqueuer is not None:
                self.stop(enqueuer)
            self.stop(worker)
        self.settle(result, before)
        return result

    def arq(self) -> Result:
        return self.job_queue(
            "arq",
            [self.args.queue_python, str(TASKS), "arq-worker"],
            lambda: self.r.exists("arq:queue:health-check"),
        )

    def taskiq(self) -> Result:
        def listening() -> bool:
            # Blocked in XREADGROUP (Redis 7.0 lists no consumer until it has read something).
            return any(c.get("cmd") == "xreadgroup" for c in self.r.client_list())

        return self.job_queue(
            "taskiq",
            [
                self.args.queue_python,
                "-m",
                "taskiq",
                "worker",
                "bench.queues_tasks:broker",
                "--workers",
                "1",
                "--max-async-tasks",
                str(self.args.concurrency),
                "--log-level",
                "WARNING",
            ],
            listening,
        )


def _lines(p: subprocess.Popen[bytes]) -> queue.Queue[str | None]:
    """The process's stdout lines, read by a daemon thread (None at EOF)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.put(line.decode().strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(lines: queue.Queue[str | None], timeout: float) -> str | None:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


_VERSIONS = """
import importlib.metadata as m, sys
for d in sys.argv[1:]:
    try:
        print(d, m.version(d))
    except m.PackageNotFoundError:
        print(d, "not-installed")
"""


def versions(python: str, dists: tuple[str, ...]) -> str:
    """`dist version, ...` as installed for interpreter `python`."""
    out = subprocess.run(
        [python, "-c", _VERSIONS, *dists], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return ", ".join(line.strip() for line in out.splitlines())


def report(results: list[Result], n: int, args: argparse.Namespace) -> None:
    print(
        f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {n:,} messages, "
        f"{args.concurrency} in flight per worker, enqueue concurrency {args.enqueue_concurrency}"
    )
    print(f"fanout ({sys.executable}): {versions(sys.executable, ('redis', 'uvloop'))}")
    print(
        f"arq/taskiq ({args.queue_python}): "
        + versions(
            args.queue_python, ("arq", "taskiq", "taskiq-redis", "redis", "aiohttp", "uvloop")
        )
    )

    def num(value: float | None, fmt: str) -> str:
        width = int("".join(c for c in fmt.split(".")[0] if c.isdigit()) or 0)
        return f"{'-':>{width}s}" if value is None else format(value, fmt)

    head = (
        f"{'':8s} {'msgs/s':>8s} {'total s':>8s} {'enqueue s':>9s} {'after-enq/s':>11s} "
        f"{'delivered':>9s} {'unique':>7s} {'dups':>5s} {'cmds/msg':>8s} {'cpu ours/others':>15s}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        print(
            f"{res.name:8s} {num(res.rate(n), '8,.0f')} {num(res.seconds, '8.2f')} "
            f"{num(res.enqueue_seconds, '9.2f')} {num(res.rate_after_enqueue(n), '11,.0f')} "
            f"{res.stats.get('delivered', 0):9,} {res.stats.get('unique', 0):7,} "
            f"{res.stats.get('duplicates', 0):5,} {res.commands_per_message:8.2f} "
            f"{num(res.cpu_ours, '10.2f')}/{num(res.cpu_others, '4.2f')}"
            + (f"  ({res.note})" if res.note else "")
        )
    rates = {res.name: res.rate(n) for res in results}
    fanout = rates.get("fanout")
    for other in ("arq", "taskiq"):
        if other in rates:
            rate = rates[other]
            ratio = f"{fanout / rate:.2f}" if fanout and rate else "n/a"
            print(f"ratio fanout / {other:7s} {ratio:>8s}")
    print(
        "msgs/s: N / (enqueue start -> N delivered); after-enq/s: delivery rate once enqueueing\n"
        "was over (the worker without its enqueuer on the same cores); cmds/msg: Redis commands\n"
        "per message (INFO commandstats, fanout's inside Lua included); delivered / unique /\n"
        "dups: fakegraph's stats after the workers stopped; cpu: cores busy on average during\n"
        "the run, by what this script started / by everything else on the machine (its\n"
        "processes and steal; interrupt time, mostly this run's loopback traffic, in neither)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256, help="in flight per worker")
    parser.add_argument(
        "--enqueue-concurrency",
        type=int,
        default=64,
        help="arq/taskiq enqueue calls in flight (each its own Redis connection)",
    )
    parser.add_argument(
        "--queue-python",
        default=sys.executable,
        help="interpreter for the arq/taskiq workers and enqueuers (default: this one), e.g.\n"
        "a venv with redis-py 5.x, which arq declares it needs",
    )
    parser.add_argument(
        "--timeout", type=float, default=90, help="seconds, per contestant (default: 90)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=160,
        help="seconds for the whole script's waits for deliveries (default: 160); a\n"
        "contestant cut short reports what it delivered by then",
    )
    parser.add_argument(
        "--only", default="fanout,arq,taskiq", help="comma-separated subset, in this order"
    )
    args = parser.parse_args()
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(chosen) - {"fanout", "arq", "taskiq"}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")

    tmp = tempfile.mkdtemp(prefix="fanout-bench-")
    bench = Bench(args, tmp)
    results: list[Result] = []
    try:
        bench.start_servers()
        for name in chosen:
            try:
                results.append(getattr(bench, name)())
            except Exception as exc:  # one contestant failing still reports the others
                results.append(Result(name, note=f"error: {type(exc).__name__}: {exc}"))
            print(f"{name}: done", file=sys.stderr, flush=True)
        report(results, args.messages, args)
    finally:
        bench.stop_all()
        bench.graph.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
