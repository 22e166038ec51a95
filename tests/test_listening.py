"""Using what Meta tells us (issue 12, items 2 and 3): the 24-hour window and the page's
suppression list, applied at dispatch without any API call, on real processes.

The window test is fed end to end: fakegraph sends people's messages as signed webhooks to the
producer's receiver, and the consumers' event processing records them. Tests that need
interactions at a chosen time (25 hours ago, a day of webhooks) call ``shared.window.touch``
itself, the function that processing calls for every inbound event that opens the window, on
the test's own redis-server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import API_TOKENS, OTHER_PAGE, PAGE, RedisServer, Stack, psids, wait_for
from redis.asyncio import Redis as AsyncRedis
from redis_cluster import Cluster, ClusterStack

from services.consumer import ledger
from shared import keys, suppressions, window
from shared.classify import classify
from shared.models import GraphAnswer, GraphError
from shared.provider import SendResult
from shared.redisconn import open_redis
from shared.scripts import Scripts

UTILITY = {
    "template": {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "shipped"}]}],
    }
}


def touch_all(url: str, page_id: str, people: list[str], ts_ms: int) -> None:
    """Open the window of each person as an inbound message at ts_ms would."""

    async def run() -> None:
        client = AsyncRedis.from_url(url)
        try:
            for psid in people:
                await window.touch(client, page_id, psid, ts_ms)
        finally:
            await client.aclose()

    asyncio.run(run())


def last_seen(r: redis.Redis, people: list[str]) -> list[int | None]:
    """What shared.window reads at dispatch, through a synchronous client."""
    pipe = r.pipeline(transaction=False)
    for psid in people:
        for key in window.bucket_keys(PAGE, psid):
            pipe.hget(key, psid)
    return window.newest(pipe.execute())


def start(stack: Stack, *fake_args: str) -> httpx.Client:
    stack.start_fakegraph(*fake_args)
    api = stack.start_producer()
    stack.start_consumer("c1")
    return api


def bodies(stack: Stack) -> dict[str, dict[str, Any]]:
    assert stack.fake is not None
    data: dict[str, dict[str, Any]] = stack.fake.http.get("/_fake/bodies").json()
    return data


def test_touch_keeps_the_newest_time_once_and_stays_a_listpack(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    touch_all(redis_server.url, PAGE, ["111"], now_ms - 5_000)
    touch_all(redis_server.url, PAGE, ["111"], now_ms - 60_000)  # late and older: ignored
    touch_all(redis_server.url, PAGE, ["111"], now_ms - 5_000)  # a replay: nothing changes
    touch_all(redis_server.url, PAGE, ["222"], now_ms - 9 * 86400 * 1000)  # too old to keep
    bucket = window.bucket_keys(PAGE, "111")[0]  # a small page writes its smallest tier
    assert r.hget(bucket, "111") == str((now_ms - 5_000) // 1000).encode()
    assert last_seen(r, ["111", "222"]) == [(now_ms - 5_000) // 1000, None]
    assert r.object("encoding", bucket) == b"listpack"
    assert 0 < r.ttl(bucket) <= window.KEEP_S
    # The page has been heard from since its oldest event, not its newest.
    heard = r.hget(keys.window_heard(PAGE), "first")
    assert heard == str((now_ms - 9 * 86400 * 1000) // 1000).encode()


def test_a_page_moves_up_a_tier_of_buckets_and_is_read_across_tiers(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    """Past 64 people per bucket of its tier a page writes a tier of 8 times more buckets;
    readers find people in either, the newest time winning, and every bucket stays small."""
    now_ms = int(time.time() * 1000)
    early = psids(window.TIERS[0] * 64 + 1)  # one more than the first tier takes
    touch_all(redis_server.url, PAGE, early, now_ms - 7200_000)
    assert r.hget(keys.window_heard(PAGE), "tier") == b"2"
    later = psids(100, offset=900_000)
    touch_all(redis_server.url, PAGE, [*later, early[0]], now_ms - 60_000)
    assert all(r.hget(window.bucket_keys(PAGE, p)[1], p) for p in later)
    seen = last_seen(r, [early[0], early[1], *later])
    assert (
        seen
        == [(now_ms - 60_000) // 1000, (now_ms - 7200_000) // 1000]
        + [(now_ms - 60_000) // 1000] * 100
    )
    encodings = {r.object("encoding", k) for k in r.scan_iter("fanout:page:*:win:*")}
    assert encodings == {b"listpack"}


@pytest.mark.parametrize(
    ("code", "subcode", "suppress"),
    [
        (551, 1545041, True),  # blocked the page
        (200, 1545041, True),
        (100, 2018001, True),  # no matching user: an unknown or invalid PSID
        (10, 1893015, True),  # opted out
        (10, 2018278, False),  # outside the window: the person may write again
        (613, 2018338, False),  # too many tagged messages: for now only
        (100, None, False),  # a bad parameter is the message's fault, not the person's
    ],
)
def test_answers_permanent_for_the_person_suppress_them(
    code: int, subcode: int | None, suppress: bool
) -> None:
    answer = GraphAnswer(error=GraphError(code=code, error_subcode=subcode))
    decision = classify(SendResult(400, answer, None, None, 0.01))
    assert (decision.verdict, decision.suppress) == ("failed", suppress)


def test_update_job_requiring_the_window_sends_only_to_people_in_it(stack: Stack) -> None:
    stack.env["FANOUT_APP_SECRET"] = "app-secret-0123456789abcdef"
    stack.env["FANOUT_WEBHOOK_VERIFY_TOKEN"] = "verify-token-0123456789"
    api = stack.start_producer()  # first: fakegraph plays Meta's webhooks to it
    stack.start_fakegraph("--webhook-url", f"{api.base_url}/webhooks/messenger")
    stack.start_consumer("c1")
    people = psids(2000)
    inside, outside = people[:1000], people[1000:]
    assert stack.fake is not None
    stack.fake.http.post("/_fake/inbound", json={"page_id": PAGE, "psids": inside})
    touch_all(stack.redis_server.url, PAGE, outside[:10], int(time.time() * 1000) - 25 * 3600_000)

    def heard() -> bool:
        return all(found is not None for found in last_seen(stack.r, inside))

    wait_for(heard, 20, "every inbound person's last interaction")
    job_id = stack.submit(people, window="require")
    job = stack.wait_done(job_id, 30)
    assert (job["status"], job["sent"], job["failed"], job["skipped"]) == (
        "completed",
        1000,
        0,
        1000,
    )
    assert (job["window"], job["window_default"]) == ("require", False)
    assert job["skipped_reasons"] == {"window_closed": 1000}
    assert stack.fake is not None and stack.fake.stats()["requests"] == 1000
    assert sorted(bodies(stack)) == inside
    skipped: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"outcome": "skipped", "limit": 300}
        if after:
            params["after"] = after
        page = api.get(f"/v1/jobs/{job_id}/errors", params=params).json()
        skipped += [item["recipient"] for item in page["items"]]
        assert {item["code"] for item in page["items"]} <= {"window_closed"}
        after = page["next"]
        if after is None:
            break
    assert sorted(skipped) == outside
    assert api.get(f"/v1/jobs/{job_id}/errors").json()["items"] == []  # no failures
    person = api.get(f"/v1/pages/{PAGE}/people/{inside[0]}").json()
    assert (person["in_window"], person["suppressed"]) == (True, None)
    assert person["last_interaction_at"] is not None
    closed = api.get(f"/v1/pages/{PAGE}/people/{outside[0]}").json()
    assert (closed["in_window"], closed["last_interaction_at"] is None) == (False, False)
    unknown = api.get(f"/v1/pages/{PAGE}/people/{outside[-1]}").json()
    assert (unknown["in_window"], unknown["last_interaction_at"]) == (False, None)


def test_utility_fallback_goes_to_people_outside_the_window(stack: Stack) -> None:
    start(stack)
    people = psids(2000)
    inside, outside = people[:1000], people[1000:]
    touch_all(stack.redis_server.url, PAGE, inside, int(time.time() * 1000))
    job_id = stack.submit(people, fallback=UTILITY)
    job = stack.wait_done(job_id, 30)
    assert (job["sent"], job["skipped"], job["fallback_sent"]) == (2000, 0, 1000)
    assert (job["window"], job["window_default"]) == ("require", True)
    sent = bodies(stack)
    free_form = sorted(p for p, b in sent.items() if "text" in b["message"])
    templates = sorted(p for p, b in sent.items() if "template" in b["message"])
    assert (free_form, templates) == (inside, outside)
    sent[outside[0]].pop("metadata", None)  # receipts' correlation, not this test's concern
    assert sent[outside[0]] == {
        "recipient": {"id": outside[0]},
        "message": UTILITY,
        "messaging_type": "UTILITY",
    }
    assert sent[inside[0]]["messaging_type"] == "UPDATE"


def test_blocked_people_are_suppressed_and_skipped_until_deleted(stack: Stack) -> None:
    people = psids(1000)
    blocked = people[::100]  # 1%
    api = start(stack, "--blocked", ",".join(blocked))
    assert stack.fake is not None
    first = stack.wait_done(stack.submit(people), 30)
    assert (first["sent"], first["failed"], first["error_codes"]) == (990, 10, {"551": 10})
    listed = api.get(f"/v1/pages/{PAGE}/suppressions", params={"limit": 1000}).json()
    assert sorted(i["psid"] for i in listed["items"]) == sorted(blocked)
    assert {i["code"] for i in listed["items"]} == {"551/1545041"}
    assert listed["next"] is None

    requests = stack.fake.stats()["requests"]
    second = stack.wait_done(stack.submit(people), 30)
    assert (second["sent"], second["failed"], second["skipped"]) == (990, 0, 10)
    assert second["skipped_reasons"] == {"suppressed": 10}
    assert stack.fake.stats()["requests"] - requests == 990  # none to the blocked people
    person = api.get(f"/v1/pages/{PAGE}/people/{blocked[0]}").json()
    assert person["suppressed"]["code"] == "551/1545041"

    # They unblocked the page: the user lifts one suppression and the next job reaches them.
    stack.fake.configure(blocked=blocked[1:])
    assert api.delete(f"/v1/pages/{PAGE}/suppressions/{blocked[0]}").status_code == 204
    assert api.delete(f"/v1/pages/{PAGE}/suppressions/{blocked[0]}").status_code == 404
    requests = stack.fake.stats()["requests"]
    third = stack.wait_done(stack.submit(people), 30)
    assert (third["sent"], third["failed"], third["skipped"]) == (991, 0, 9)
    assert stack.fake.stats()["requests"] - requests == 991
    # suppress: false asks Meta about everyone again (and they answer 551 once more).
    fourth = stack.wait_done(stack.submit(people, suppress=False), 30)
    assert (fourth["sent"], fourth["failed"], fourth["skipped"]) == (991, 9, 0)
    assert fourth["suppress"] is False


def test_window_default_requires_it_only_after_a_day_of_webhooks(stack: Stack) -> None:
    stack.start_fakegraph()
    api = stack.start_producer()  # no consumer: only the rule the job got matters here
    now_ms = int(time.time() * 1000)
    assert stack.job(stack.submit(["1"]))["window"] == "ignore"
    touch_all(stack.redis_server.url, PAGE, ["7"], now_ms - 3600_000)  # heard for an hour
    assert stack.job(stack.submit(["1"]))["window"] == "ignore"
    touch_all(stack.redis_server.url, PAGE, ["8"], now_ms - 25 * 3600_000)  # and for a day
    update = stack.job(stack.submit(["1"]))
    assert (update["window"], update["window_default"]) == ("require", True)
    tagged = stack.submit(["1"], messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    assert stack.job(tagged)["window"] == "ignore"  # a tag's lane is not the 24-hour window
    ignored = stack.job(stack.submit(["1"], window="ignore"))
    assert (ignored["window"], ignored["window_default"]) == ("ignore", False)
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"fallback": {"text": "hi"}}, "fallback.template"),
        ({"fallback": UTILITY, "window": "ignore"}, "window"),
        ({"fallback": UTILITY, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}, "fallback"),
        ({"window": "sometimes"}, "window"),
        (
            {
                "fallback": {
                    "template": {
                        **UTILITY["template"],
                        "components": [
                            {"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}]}
                        ],
                    }
                }
            },
            "fallback.template.components[0].parameters[0].text",
        ),
        ({"suppress": "no"}, "suppress"),
    ],
)
def test_bad_window_fields_are_refused_naming_them(
    stack: Stack, extra: dict[str, Any], field: str
) -> None:
    api = stack.start_producer()
    body = {"page_id": PAGE, "message": {"text": "hi"}, "recipients": ["1"]}
    answer = api.post("/v1/jobs", json={**body, "messaging_type": "UPDATE", **extra})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert stack.r.dbsize() == 0


def test_people_routes_refuse_bad_input_and_other_tenants_pages(stack: Stack) -> None:
    api = stack.start_producer()
    base = f"/v1/pages/{PAGE}"

    def refused(answer: httpx.Response, status: int, code: str, field: str | None) -> None:
        assert answer.status_code == status, answer.text
        assert (answer.json()["error"]["code"], answer.json()["error"]["field"]) == (code, field)

    for answer in (
        api.get(f"{base}/people/abc"),
        api.delete(f"{base}/suppressions/12x"),
    ):
        refused(answer, 422, "invalid_field", "psid")
    refused(api.get(f"{base}/suppressions", params={"after": "x"}), 422, "invalid_field", "after")
    refused(api.get(f"{base}/suppressions", params={"limit": 0}), 422, "invalid_field", "limit")
    bad = api.post(f"{base}/suppressions", json={"recipients": ["1", "b"]})
    refused(bad, 422, "invalid_field", "recipients[1]")
    refused(
        api.post(f"{base}/suppressions", json={"recipients": []}),
        422,
        "invalid_field",
        "recipients",
    )
    refused(api.post(f"{base}/suppressions", content=b"{"), 400, "invalid_json", None)
    extra = api.post(f"{base}/suppressions", json={"recipients": ["1"], "why": "x"})
    refused(extra, 422, "invalid_field", "why")
    other = f"/v1/pages/{OTHER_PAGE}"
    for answer in (
        api.get(f"{other}/suppressions"),
        api.post(f"{other}/suppressions", json={"recipients": ["1"]}),
        api.delete(f"{other}/suppressions/1"),
        api.get(f"{other}/people/1"),
    ):
        refused(answer, 403, "page_forbidden", "page_id")
    assert stack.r.dbsize() == 0  # nothing written by any refusal

    people = psids(250, offset=70_000)
    asked = {"recipients": [*people, people[0]], "reason": "gdpr"}
    added = api.post(f"{base}/suppressions", json=asked)
    assert added.status_code == 200 and added.json() == {"added": 250, "total": 250}
    seen: list[str] = []
    after, pages = None, 0
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = api.get(f"{base}/suppressions", params=params).json()
        seen += [i["psid"] for i in page["items"]]
        assert {i["code"] for i in page["items"]} == {"gdpr"}
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert (sorted(seen), len(seen), pages) == (people, 250, 3)  # each exactly once
    refused(api.get(f"{base}/suppressions", params={"after": "1"}), 422, "invalid_field", "after")
    # The other tenant sees none of it, and cannot lift it.
    theirs = httpx.get(
        f"{api.base_url}{base}/people/{people[0]}",
        headers={"Authorization": f"Bearer {API_TOKENS['other']}"},
    )
    assert theirs.status_code == 403
    person = api.get(f"{base}/people/{people[0]}").json()
    assert person["suppressed"]["code"] == "gdpr" and person["suppressed"]["suppressed_at"]


def test_skips_count_once_and_a_redelivered_chunk_sends_none_of_them(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    """The ledger side of a skip, on a job hash as create_job leaves it: a second delivery of
    the chunk (the same skip script again) moves no counter, and begin reads the skipped
    recipients as finished so nobody is sent."""
    k = keys.JobKeys.of(keys.new_job_id(0))
    r.hset(k.hash, mapping={"status": "running", "total": 4, "sent": 0, "failed": 0, "skipped": 0})

    async def run() -> tuple[dict[str, int], dict[str, int], str]:
        client = AsyncRedis.from_url(redis_server.url)
        scripts = Scripts(client)
        skips = [
            ledger.Skip(1, "11", "window_closed", "closed"),
            ledger.Skip(3, "13", "suppressed", "suppressed"),
        ]
        first = await ledger.skip(scripts, k, skips, [2])
        again = await ledger.skip(scripts, k, skips, [2])
        begun = await ledger.begin(scripts, k, 0, 4)
        await client.aclose()
        return first, again, begun.states

    first, again, states = asyncio.run(run())
    assert (first, again, states) == ({"window_closed": 1, "suppressed": 1}, {}, "0101")
    h = r.hgetall(k.hash)
    assert (h[b"skipped"], h[b"skip:window_closed"], h[b"skip:suppressed"]) == (b"2", b"1", b"1")
    assert r.xlen(k.skips) == 2 and r.getbit(k.fallback, 2) == 1


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli creates the cluster")
def test_window_and_suppressions_on_a_redis_cluster(tmp_path: Path) -> None:
    """The same dispatch on 3 masters + 3 replicas: the window's buckets and the suppression
    list live in the page's slot, the job's skip script in the job's. Fed through
    ``shared.window.touch`` and ``shared.suppressions.add`` over a cluster client."""
    cluster = Cluster(tmp_path)
    stack = ClusterStack(cluster)
    try:
        stack.start_fakegraph()
        api = stack.start_producer()
        stack.start_consumer("c1")
        people = psids(300, offset=50_000)
        inside, blocked = people[:100], people[:100:20]

        async def feed() -> None:
            client = await open_redis(cluster.url)
            now_ms = int(time.time() * 1000)
            for psid in inside:
                await window.touch(client, PAGE, psid, now_ms)
            await suppressions.add(client, PAGE, blocked, "551/1545041", now_ms)
            await client.aclose()

        asyncio.run(feed())
        job = stack.wait_done(stack.submit(people, window="require"), 60)
        assert (job["sent"], job["skipped"]) == (95, 205)
        assert job["skipped_reasons"] == {"window_closed": 200, "suppressed": 5}
        assert stack.fake is not None and stack.fake.stats()["requests"] == 95
        person = api.get(f"/v1/pages/{PAGE}/people/{blocked[0]}").json()
        assert (person["in_window"], person["suppressed"]["code"]) == (True, "551/1545041")
        listed = api.get(f"/v1/pages/{PAGE}/suppressions").json()["items"]
        assert sorted(i["psid"] for i in listed) == sorted(blocked)
    finally:
        stack.stop()
        cluster.stop()


def test_a_csv_upload_carries_the_window_fields(stack: Stack) -> None:
    api = stack.start_producer()  # no consumer: the job's rules are what this checks
    spec = {
        "page_id": PAGE,
        "message": {"text": "Hi {{name}}"},
        "messaging_type": "RESPONSE",
        "fallback": UTILITY,
        "suppress": False,
    }
    files = {
        "spec": (None, json.dumps(spec)),
        "recipients": ("people.csv", b"id,name\n1,Ann\n2,Bo\n", "text/csv"),
    }
    answer = api.post("/v1/jobs", files=files)
    assert answer.status_code == 202, answer.text
    job = stack.job(answer.json()["job_id"])
    assert (job["window"], job["suppress"], job["fallback_sent"]) == ("require", False, 0)
    refused = api.post(
        "/v1/jobs", files={**files, "spec": (None, json.dumps({**spec, "window": "ignore"}))}
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "window"
