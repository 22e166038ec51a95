"""A WhatsApp number's token stays in configuration (issue 17; DESIGN: secrets never in Redis,
streams, logs, errors or metric labels), on the path most likely to leak it: Meta refuses the
token (190), the job stops with the reason, and the answer is logged and recorded. The token
appears nowhere: not in any process's output, any Redis value, the job's view and errors, or
the consumer's metrics; the start-up lines show it as ***."""

from __future__ import annotations

import re
from typing import Any, cast

import httpx
import redis
from conftest import API_TOKENS, PAGE, PAGE_TOKEN, Stack, wait_for

NUMBER = "106540352242922"
WA_TOKEN = "EAAwhatsappsecrettoken0123456789xyz"  # what fanout holds; Meta knows another


def _every_value(r: redis.Redis) -> list[bytes]:
    """Every key and every stored byte string in the database, read by type (DUMP may compress
    long strings, which could hide one)."""
    found: list[bytes] = []
    for key in cast(list[bytes], r.keys("*")):
        found.append(key)
        kind = r.type(key)
        if kind == b"string":
            found.append(cast(bytes, r.get(key)))
        elif kind == b"hash":
            found += [b for kv in cast(dict[bytes, bytes], r.hgetall(key)).items() for b in kv]
        elif kind == b"list":
            found += cast(list[bytes], r.lrange(key, 0, -1))
        elif kind == b"set":
            found += cast(set[bytes], r.smembers(key))
        elif kind == b"zset":
            found += cast(list[bytes], r.zrange(key, 0, -1))
        elif kind == b"stream":
            for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(key)):
                found += [b for kv in fields.items() for b in kv]
    return found


def test_a_refused_whatsapp_token_never_leaves_configuration(stack: Stack) -> None:
    stack.env["FANOUT_WA_NUMBERS"] = f"{NUMBER}={WA_TOKEN}"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE}|{NUMBER}"
    stack.env["FANOUT_WA_TIERS"] = f"{NUMBER}=unlimited"
    # fakegraph knows the number by another token: it answers ours 190, as Meta does.
    fake = stack.start_fakegraph("--tokens", f"{PAGE}={PAGE_TOKEN},{NUMBER}=EAAmetasown0123456")
    fake.configure(wa_numbers=[NUMBER])
    api = stack.start_producer()
    consumer = stack.start_consumer("c1")
    body: dict[str, Any] = {
        "channel": "whatsapp",
        "phone_number_id": NUMBER,
        "message": {"template": {"name": "order_update", "language": {"code": "en_US"}}},
        "recipients": [str(447700900000 + i) for i in range(5)],
    }
    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    job = stack.wait_done(job_id)
    assert job["status"] == "failed" and job["sent"] == 0, job
    assert "190" in (job["reason"] or ""), job["reason"]  # the refusal did reach the user

    errors = api.get(f"/v1/jobs/{job_id}/errors").text

    def metrics_port() -> str:  # "" (falsy) until the line is there
        found = re.search(r'"metrics_port": (\d+)}', consumer.output())
        return found[1] if found else ""

    port = int(wait_for(metrics_port, what="the consumer's metrics port"))
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'fanout_messages_total{code="190",outcome="failed"}' in metrics
    assert '"code":"190"' in errors
    secret = WA_TOKEN.encode()
    assert not [value for value in _every_value(stack.r) if secret in value]
    outputs = {proc.name: proc.output() for proc in stack.procs}  # whole, not stack.logs()' tail
    for shown in (*outputs.values(), str(job), errors, metrics, api.get("/metrics").text):
        assert WA_TOKEN not in shown
    masked = f'"wa_tokens": {{"{NUMBER}": "***"}}'
    assert masked in outputs["producer"] and masked in outputs["consumer-c1"]
    assert not [name for name, text in outputs.items() if API_TOKENS["acme"] in text]
