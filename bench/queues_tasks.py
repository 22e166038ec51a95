"""The task modules bench/queues.py runs fanout against: one arq task and one Taskiq task.

Both send one message per task, the way each library's users write it: an `async def` task
posting with one aiohttp.ClientSession shared by the whole worker (created at worker startup),
JSON body, `raise_for_status()`. No result is kept (arq `keep_result=0`; the Taskiq broker has
no result backend), as fanout keeps none per message.

Configured from the environment bench/queues.py sets:
  BENCH_REDIS_URL  redis://127.0.0.1:PORT/0
  BENCH_GRAPH_URL  http://127.0.0.1:PORT (fakegraph)
  BENCH_PAGE_TOKEN the page token sent as `Authorization: Bearer`
  BENCH_MAX_JOBS   tasks in flight per worker (arq max_jobs; Taskiq takes --max-async-tasks)

Run directly, it is the enqueuer bench/queues.py starts in a subprocess:
  python bench/queues_tasks.py arq|taskiq N CONCURRENCY
prints "ready" once connected, waits for a line on stdin, enqueues N tasks with at most
CONCURRENCY enqueue calls in flight, prints the seconds enqueueing took, and exits at the
next line or the end of stdin.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Annotated, Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings
from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
GRAPH_URL = os.environ.get("BENCH_GRAPH_URL", "http://127.0.0.1:8090")
PAGE_TOKEN = os.environ.get("BENCH_PAGE_TOKEN", "EAAbenchpagetoken")
MAX_JOBS = int(os.environ.get("BENCH_MAX_JOBS", "256"))
# Enough Redis connections for every task in flight plus the enqueuers' 64: redis-py 8 caps a
# pool at 100 by default (arq's pool then raises "Too many connections"; taskiq-redis's
# blocking pool makes tasks wait); redis-py 5 does not cap.
REDIS_CONNECTIONS = MAX_JOBS + 64

SEND_URL = f"{GRAPH_URL}/v21.0/me/messages"
HEADERS = {"Authorization": f"Bearer {PAGE_TOKEN}"}


def new_session() -> aiohttp.ClientSession:
    # As many connections as tasks in flight (aiohttp's default limit is 100).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_JOBS, limit_per_host=0))


async def post(session: aiohttp.ClientSession, psid: str) -> None:
    body = {"recipient": {"id": psid}, "message": {"text": "Hello"}, "messaging_type": "UPDATE"}
    async with session.post(SEND_URL, json=body, headers=HEADERS) as response:
        response.raise_for_status()
        await response.read()


# ---- arq ----


async def send(ctx: dict[str, Any], psid: str) -> None:
    await post(ctx["session"], psid)


async def arq_startup(ctx: dict[str, Any]) -> None:
    ctx["session"] = new_session()


async def arq_shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


class WorkerSettings:
    functions = [send]
    on_startup = arq_startup
    on_shutdown = arq_shutdown
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    redis_settings.max_connections = REDIS_CONNECTIONS
    max_jobs = MAX_JOBS
    poll_delay = 0.01  # default 0.5 s
    keep_result = 0


# ---- Taskiq ----

broker = RedisStreamBroker(REDIS_URL, max_connection_pool_size=REDIS_CONNECTIONS)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def taskiq_startup(state: TaskiqState) -> None:
    state.session = new_session()


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def taskiq_shutdown(state: TaskiqState) -> None:
    await state.session.close()


@broker.task(task_name="send")
async def send_task(psid: str, context: Annotated[Context, TaskiqDepends()]) -> None:
    await post(context.state.session, psid)


# ---- the enqueuer ----


async def _enqueue(kind: str, n: int, concurrency: int) -> None:
    psids = iter([str(10**12 + i) for i in range(n)])
    if kind == "arq":
        pool = await create_pool(WorkerSettings.redis_settings)

        async def one(psid: str) -> None:
            await pool.enqueue_job("send", psid)

    else:
        await broker.startup()
        pool = None

        async def one(psid: str) -> None:
            await send_task.kiq(psid)  # type: ignore[call-overload]  # context is injected

    async def worker() -> None:
        for psid in psids:
            await one(psid)

    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"{time.perf_counter() - started:.6f}", flush=True)
    if pool is not None:
        await pool.aclose()
    else:
        await broker.shutdown()
    # Stay (idle) until told: a process that has exited is no longer seen in /proc, and
    # bench/queues.py counts the CPU its own processes use.
    sys.stdin.readline()


def main() -> int:
    import uvloop

    kind, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if kind not in ("arq", "taskiq"):
        raise SystemExit("usage: queues_tasks.py arq|taskiq N CONCURRENCY")
    uvloop.run(_enqueue(kind, n, concurrency))
    return 0


def run_arq_worker() -> None:
    """arq's worker on uvloop (Taskiq's worker uses uvloop by itself), logging at WARNING."""
    import logging

    import uvloop
    from arq.worker import run_worker

    logging.basicConfig(level=logging.WARNING)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    if sys.argv[1:2] == ["arq-worker"]:
        run_arq_worker()
        sys.exit(0)
    sys.exit(main())
