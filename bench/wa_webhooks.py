"""WhatsApp status webhooks, measured end to end (issue 17, item 5): signed POSTs of 1-10
statuses each into ``POST /webhooks/whatsapp`` on one producer, applied by one consumer
(services/consumer/wa_events.py, one wa_status.lua call per status), for a job of ``--people``
recipients: every person ``sent`` then ``delivered``, half of them ``read``, 5% ``failed``
(131026, so also suppressed). Prints the statuses/s the receiver took, the statuses/s one
consumer then applies (started once every POST is in the inbox, until the job's counts are all
in), and the Redis bytes per recipient of the
job's receipt bitmaps (delivered, read, undelivered).

    .venv/bin/python bench/wa_webhooks.py [--people 20000] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Harness, wait
from shared import keys, webhooks

SECRET = "bench-app-secret"
NUMBER = "106540352242922"


def _statuses(job_id: str, people: int) -> tuple[list[dict[str, object]], int, int, int]:
    rng = random.Random(1)
    now = int(time.time())
    out: list[dict[str, object]] = []
    delivered = read = failed = 0
    for pos in range(people):
        base = {
            "id": f"wamid.{pos}",
            "timestamp": str(now),
            "recipient_id": str(447700000000 + pos),
            "biz_opaque_callback_data": webhooks.metadata(job_id, pos),
        }
        out.append({**base, "status": "sent"})
        if rng.random() < 0.05:
            error = {"code": 131026, "title": "Message undeliverable"}
            out.append({**base, "status": "failed", "errors": [error]})
            failed += 1
            continue
        out.append({**base, "status": "delivered"})
        delivered += 1
        if rng.random() < 0.5:
            out.append({**base, "status": "read"})
            read += 1
    rng.shuffle(out)
    return out, delivered, read, failed


def _bodies(statuses: list[dict[str, object]]) -> list[bytes]:
    rng = random.Random(2)
    bodies = []
    while statuses:
        size = rng.randint(1, 10)
        batch, statuses = statuses[:size], statuses[size:]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER},
            "statuses": batch,
        }
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
            ],
        }
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    return bodies


async def _post_all(port: int, bodies: list[bytes], connections: int) -> None:
    """Each body once, over keep-alive connections of a raw HTTP/1.1 client (as
    bench/webhooks.py: the client costs as little as it can of the cores it shares)."""
    queue = list(reversed(bodies))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                body = queue.pop()
                head = (
                    f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Content-Type: application/json\r\n"
                    f"{webhooks.SIGNATURE_HEADER}: {webhooks.sign(SECRET, body)}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                answer = await reader.readuntil(b"\r\n\r\n")
                if int(answer[9:12]) != 200:
                    raise SystemExit(f"POST answered {answer[:12]!r}")
                length = 0
                for line in answer.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with Harness(FANOUT_APP_SECRET=SECRET, FANOUT_WEBHOOK_VERIFY_TOKEN="v") as h:
        r = h.redis()
        api = h.producer()
        job_id = keys.new_job_id(0)
        k = keys.JobKeys.of(job_id)
        r.hset(k.hash, mapping={"total": args.people, "status": "completed", "page_id": NUMBER})
        statuses, delivered, read, failed = _statuses(job_id, args.people)
        bodies = _bodies(statuses)
        started = time.perf_counter()
        port = int(str(api.base_url).rsplit(":", 1)[1].rstrip("/"))
        asyncio.run(_post_all(port, bodies, args.connections))
        posted_s = time.perf_counter() - started
        # The consumer starts once every POST is in the inbox: it alone sets the pace below.
        started = time.perf_counter()
        h.consumer()

        def counted() -> bool:
            got = r.hmget(k.hash, ["delivered", "read", "undelivered"])
            return [int(x or 0) for x in got] == [delivered, read, failed]

        wait(counted, "every status applied", timeout=600)
        applied_s = time.perf_counter() - started
        bitmaps = sum(r.memory_usage(key) or 0 for key in (k.delivered, k.read, k.undelivered))
        n = len(statuses)
        print(f"statuses: {n:,} in {len(bodies):,} signed POSTs ({args.connections} connections)")
        print(
            f"receiver took: {n / posted_s:,.0f} statuses/s ({len(bodies) / posted_s:,.0f} POSTs/s)"
        )
        print(f"applied by one consumer (its start-up included): {n / applied_s:,.0f} statuses/s")
        print(f"receipt bitmaps: {bitmaps / args.people:.2f} B per recipient")


if __name__ == "__main__":
    main()
