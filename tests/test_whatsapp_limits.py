"""WhatsApp's limits at dispatch (issue 17, item 3), fleet-wide, on real processes: the number's
rate in every one-second window, the pair limit across jobs, the portfolio's tier.

fakegraph plays the Cloud API (services/fakegraph/whatsapp.py, Meta's answers as documented:
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages) and keeps the
receive time of every accepted send, so each limit is checked where Meta would see it.
"""

from __future__ import annotations

import signal
import time
from functools import partial
from typing import Any, cast

import msgspec
import pytest
import redis
from conftest import PAGE, PAGE_TOKEN, FakeGraph, Stack, most_in_any_second, wait_for
from redis.asyncio import Redis as AsyncRedis

from services.consumer import pairs, reach
from services.consumer.limiter import STRICT_JITTER_S, strict_rate
from shared import keys
from shared.providers import messenger, whatsapp, whatsapp_message
from shared.scripts import Scripts
from shared.settings import consumer_settings

NUMBER = "106540352242922"  # a phone_number_id, as Meta's examples spell them
NUMBER_TOKEN = "EAAwhatsapptoken0123456789secret"
TEMPLATE = {"template": {"name": "order_update", "language": {"code": "en_US"}}}


def _people(n: int, offset: int = 0) -> list[str]:
    return [str(447700900000 + offset + i) for i in range(n)]


def _start(stack: Stack, consumers: int = 1, **env: str) -> FakeGraph:
    """Redis, fakegraph answering for the page and the number, a producer and consumers."""
    stack.env["FANOUT_WA_NUMBERS"] = f"{NUMBER}={NUMBER_TOKEN}"
    stack.env["FANOUT_TENANT_PAGES"] = f"acme={PAGE}|{NUMBER}"
    stack.env.update(env)
    tokens = f"{PAGE}={PAGE_TOKEN},{NUMBER}={NUMBER_TOKEN}"
    fake = stack.fake = FakeGraph(stack.procs, stack.env, stack.logdir, "--tokens", tokens)
    stack.env["FANOUT_GRAPH_URL"] = fake.url
    fake.configure(wa_numbers=[NUMBER])
    stack.start_producer()
    started = [stack.start_consumer(f"c{i}") for i in range(consumers)]

    def reading() -> bool:  # the whole fleet is there before the first job
        return all('"consumer started"' in proc.output() for proc in started)

    wait_for(reading, 30, "the consumers to start")
    return fake


def _submit(stack: Stack, people: list[str], message: dict[str, Any], **extra: Any) -> str:
    assert stack.api is not None
    body = {"channel": "whatsapp", "phone_number_id": NUMBER, "message": message}
    response = stack.api.post("/v1/jobs", json={**body, "recipients": people, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _sends(fake: FakeGraph) -> list[tuple[float, str, str, str]]:
    """(receive time, number, to, type) of every send the stand-in accepted."""
    data: dict[str, Any] = fake.http.get("/_fake/whatsapp").json()
    return [(float(t), str(n), str(to), str(kind)) for t, n, to, kind in data["sends"]]


def _refused(fake: FakeGraph) -> dict[str, dict[str, int]]:
    """Refusals the stand-in answered: code -> recipient -> count."""
    data: dict[str, dict[str, int]] = fake.http.get("/_fake/refused").json()
    return data


def _wa_stats(fake: FakeGraph) -> dict[str, Any]:
    data: dict[str, Any] = fake.http.get("/_fake/whatsapp").json()
    return data


def test_busiest_second_counts_sliding_windows() -> None:
    assert most_in_any_second([]) == 0
    assert most_in_any_second([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # [0.5, 1.5) holds four
    assert most_in_any_second([0.0, 1.0, 2.0]) == 1


def test_strict_rate_keeps_every_second_within_the_rate() -> None:
    # One permit per interval of 1/r s, each up to STRICT_JITTER_S late: at most
    # ceil(r * (1 + jitter)) fall in any second, which is the rate itself.
    for rate in (1, 10, 80, 1000):
        paced = strict_rate(rate)
        assert paced < rate
        assert paced * (1 + STRICT_JITTER_S) <= rate + 1e-9


def test_pair_backoff_is_metas_4_to_the_x_capped() -> None:
    assert pairs.backoff_s(1, 6.0) == 6.0  # at least the pair interval
    assert pairs.backoff_s(2, 6.0) == 16.0
    assert pairs.backoff_s(3, 6.0, hint_s=100.0) == 100.0  # the answer's hint wins when longer
    assert pairs.backoff_s(9, 6.0) == pairs.BACKOFF_CAP_S


def test_runs_cut_at_every_gap() -> None:
    assert reach.runs([]) == []
    assert reach.runs([0, 1, 2, 5, 6, 9]) == [[0, 1, 2], [5, 6], [9]]


def test_the_number_never_exceeds_its_rate_in_any_second(stack: Stack) -> None:
    """Two consumers, a chunk of ten each at a time, 10 sends/s for the number: fakegraph's
    receive times never hold more than 10 in any one-second window."""
    rate = 10
    fake = _start(stack, consumers=2, FANOUT_WA_RATE_LIMIT=str(rate), FANOUT_CHUNK_SIZE="10")
    people = _people(60)
    job_id = _submit(stack, people, {"text": {"body": "Your order is on its way"}})
    job = stack.wait_done(job_id, timeout=90)
    assert (job["sent"], job["failed"], job["skipped"]) == (60, 0, 0)
    times = [t for t, number, _, _ in _sends(fake) if number == NUMBER]
    assert len(times) == 60
    assert most_in_any_second(times) <= rate
    # Paced, not merely lucky: 60 sends at 10/s take at least five seconds end to end.
    assert max(times) - min(times) >= (60 - rate) / rate
    assert _refused(fake) == {}  # not one 130429


def test_the_same_person_twice_waits_for_the_pair_interval(stack: Stack) -> None:
    """Two jobs of one number to the same people in quick succession, through two consumers:
    every person's second message reaches the stand-in at least the pair interval after the
    first, none is refused with 131056, and the waits are not attempts (nothing failed)."""
    interval = 1.5
    fake = _start(
        stack,
        consumers=2,
        FANOUT_WA_RATE_LIMIT="0",
        FANOUT_WA_PAIR_INTERVAL_S=str(interval),
    )
    fake.configure(wa_pair_interval_s=interval)
    people = _people(20)
    first = _submit(stack, people, {"text": {"body": "First"}})
    second = _submit(stack, people, {"text": {"body": "Second"}})
    for job_id in (first, second):
        job = stack.wait_done(job_id, timeout=60)
        assert (job["sent"], job["failed"], job["skipped"], job["indoubt"]) == (20, 0, 0, 0)
    by_person: dict[str, list[float]] = {}
    for t, number, to, _ in _sends(fake):
        if number == NUMBER:
            by_person.setdefault(to, []).append(t)
    assert sorted(by_person) == sorted(people)
    for person, times in by_person.items():
        assert len(times) == 2, person
        assert abs(times[1] - times[0]) >= interval, (person, times)
    assert _wa_stats(fake)["pair_violations"] == 0
    assert _refused(fake) == {}  # not one 131056


def test_messenger_jobs_pay_nothing_for_whatsapps_limits() -> None:
    """No last permit and no tier for a Messenger job (and none for a WhatsApp text or an
    unlimited tier): the Senders' hooks stay None, so a Messenger send costs no extra call."""
    settings = consumer_settings(
        {
            "FANOUT_PAGE_TOKENS": f"{PAGE}={PAGE_TOKEN}",
            "FANOUT_WA_NUMBERS": f"{NUMBER}={NUMBER_TOKEN}",
            "FANOUT_WA_TIERS": f"{NUMBER}=unlimited",
        }
    )
    scripts = cast(Scripts, None)  # never called: nothing is built for these jobs
    redis_client = cast(AsyncRedis, None)
    assert pairs.for_job(scripts, messenger.PROVIDER, settings, PAGE) is None
    permits = pairs.for_job(scripts, whatsapp.PROVIDER, settings, NUMBER)
    assert permits is not None and permits.interval_s == 6.0
    template = whatsapp_message.WhatsAppMessage(
        template=whatsapp_message.Template(
            name="order_update", language=whatsapp_message.Language(code="en_US")
        )
    )
    text = whatsapp_message.WhatsAppMessage(text=whatsapp_message.Text(body="Hi"))
    for_job = partial(reach.for_job, scripts, redis_client)
    assert for_job(settings, "messenger", PAGE, template) is None
    assert for_job(settings, "whatsapp", NUMBER, text) is None
    assert for_job(settings, "whatsapp", NUMBER, template) is None  # unlimited
    limited = msgspec.structs.replace(settings, wa_tiers={})  # the default tier, 250
    tier = for_job(limited, "whatsapp", NUMBER, template)
    assert tier is not None and tier.tier == 250 and tier.key == keys.wa_reached(NUMBER)


@pytest.mark.timeout(120)
def test_a_pair_refusal_backs_off_the_person_not_the_number(stack: Stack) -> None:
    """Meta answers 131056 for one person every time (another app sending from the number,
    say): that person is retried after the back-off and fails with 131056 once their retry
    budget is spent, while everyone else is sent and the number is neither cooled down nor
    held by its breaker."""
    fake = _start(stack, FANOUT_MAX_ATTEMPTS="2")
    refused, others = _people(1), _people(30, offset=100)
    fake.configure(wa_errors=dict.fromkeys(refused, 131056))
    job = stack.wait_done(_submit(stack, refused + others, TEMPLATE), timeout=60)
    assert (job["sent"], job["failed"], job["skipped"]) == (30, 1, 0)
    assert job["error_codes"] == {"131056": 1}
    # Retried after Meta's back-off (6 s, then 16 s), until the budget of FANOUT_MAX_ATTEMPTS
    # strikes is spent: a strike counts only while others are being answered
    # (pagehealth.RetryBudget), so the person is tried two or three times, never more.
    tries = _refused(fake)["131056"]
    assert list(tries) == refused and 2 <= tries[refused[0]] <= 3
    assert {to for _, _, to, _ in _sends(fake)} == set(others)
    state = stack.r.hgetall(keys.rate(NUMBER))
    assert b"pause_until" not in state and b"breaker" not in state


def _pending(stack: Stack) -> int:
    """Chunks held by consumers (pending in the work streams)."""
    shards = range(int(stack.env["FANOUT_SHARDS"]))
    found = [stack.r.xpending(keys.work_stream(s), keys.GROUP) for s in shards]
    return sum(int(p["pending"]) for p in found)


def _age(r: redis.Redis, key: str, people: int) -> None:
    """Make the oldest ``people`` of the reach zset older than 24 h, as a day passing would."""
    oldest = cast(list[bytes], r.zrange(key, 0, people - 1))
    long_ago = (time.time() - 25 * 3600) * 1000
    r.zadd(key, dict.fromkeys(oldest, long_ago))


@pytest.mark.timeout(120)
def test_a_spread_job_never_goes_beyond_the_tier(stack: Stack) -> None:
    """Tier 250, a template to 300 people outside any service window, accepted as spread:
    exactly 250 reach the stand-in, the other 50 wait (unsent, not skipped) with the job
    showing why and until when; once 50 places age out of the moving 24 h, they go."""
    tiers = {"FANOUT_WA_TIERS": f"{NUMBER}=250", "FANOUT_DRAIN_S": "120"}
    fake = _start(stack, consumers=2, **tiers)  # at the number's default 80/s
    fake.configure(wa_tier=250)
    people = _people(300)
    job_id = _submit(stack, people, TEMPLATE, tier="spread")
    reached = keys.wa_reached(NUMBER)  # a number in no portfolio is its own

    def held() -> dict[str, Any] | None:
        job = stack.job(job_id)
        return job if job["sent"] == 250 and job.get("page_hold") == "tier_reached" else None

    job = wait_for(held, 60, "250 sent and the job held by the tier")
    assert job is not None
    assert job["status"] == "running"
    assert (job["failed"], job["skipped"], job["indoubt"]) == (0, 0, 0)
    until = time.mktime(time.strptime(job["hold_until"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert until - time.timezone - time.time() > 23 * 3600  # when the first place returns
    assert stack.r.zcard(reached) == 250
    stats = _wa_stats(fake)
    assert (stats["accepted"], stats["tier_violations"]) == (250, 0)
    assert len({to for _, _, to, _ in _sends(fake)}) == 250

    # A pause puts the waiting chunk back in the job's backlog; a resume sends it out again,
    # and it waits for a place once more (nothing sent meanwhile).
    assert stack.api is not None
    assert stack.api.post(f"/v1/jobs/{job_id}/pause").status_code == 200
    wait_for(lambda: not _pending(stack), 30, "the waiting chunk back in the backlog")
    assert stack.r.llen(keys.JobKeys.of(job_id).backlog) >= 1
    assert stack.api.post(f"/v1/jobs/{job_id}/resume").status_code == 200
    wait_for(lambda: _pending(stack), 30, "the chunk out again, waiting")
    wait_for(held, 30, "the job held by the tier again")

    # The consumers stop: a chunk waiting for a place goes back to the stream at once rather
    # than holding the drain (120 s here), and its waiting people were never marked attempted.
    for proc in stack.consumers:
        proc.signal(signal.SIGTERM)
    for proc in stack.consumers:
        assert proc.wait(30) == 0
    assert stack.job(job_id)["sent"] == 250

    # A day passes for the 50 reached first: their places return, and a new consumer sends
    # the 50 waiting.
    fake.configure(wa_tier=0)  # the stand-in's own clock has not moved a day
    _age(stack.r, reached, 50)
    stack.start_consumer("c9")
    job = stack.wait_done(job_id, timeout=60)
    assert (job["sent"], job["failed"], job["skipped"], job["indoubt"]) == (300, 0, 0, 0)
    assert job.get("page_hold") is None
    assert {to for _, _, to, _ in _sends(fake)} == set(people)
    assert stack.r.zcard(reached) == 250  # the aged 50 trimmed, the last 50 in
