"""Pure pieces, case by case: the provider-answer table, backoff, settings, keys, logs."""

from __future__ import annotations

import logging

import pytest

from shared import keys
from shared.classify import backoff, classify
from shared.logs import JsonFormatter
from shared.models import GraphAnswer, GraphError
from shared.provider import SendResult, parse_retry_after, regain_access_s
from shared.settings import Secret, SettingsError, consumer_settings, producer_settings


def answer(
    status: int, code: int | None = None, subcode: int | None = None, **kw: object
) -> SendResult:
    if code is None:
        graph = GraphAnswer(recipient_id="1", message_id="m_1")
    else:
        graph = GraphAnswer(error=GraphError(code=code, error_subcode=subcode, message="x", **kw))  # type: ignore[arg-type]
    return SendResult(status, graph, None, None, 0.01)


@pytest.mark.parametrize(
    ("result", "verdict", "code", "subcode"),
    [
        (answer(200), "sent", "", ""),
        (answer(400, 4), "throttled", "4", ""),
        (answer(400, 4, 2446079), "throttled", "4", "2446079"),
        (answer(400, 17), "throttled", "17", ""),
        (answer(400, 32), "throttled", "32", ""),
        (answer(400, 613), "throttled", "613", ""),
        (answer(429, 100), "throttled", "100", ""),
        (answer(500, 1), "retry", "1", ""),
        (answer(500, 2, is_transient=True), "retry", "2", ""),
        (answer(400, 1200), "retry", "1200", ""),
        (answer(400, 9999, is_transient=True), "retry", "9999", ""),
        (answer(503, 9999), "retry", "9999", ""),
        (answer(400, 190, 463), "fatal", "190", "463"),
        (answer(400, 100, 33), "fatal", "100", "33"),
        (answer(400, 551, 1545041), "failed", "551", "1545041"),
        (answer(400, 10, 2018278), "failed", "10", "2018278"),
        (answer(400, 100, 2018001), "failed", "100", "2018001"),
        (answer(403, 200), "failed", "200", ""),
        (answer(400, 230), "failed", "230", ""),
        (answer(400, 368), "failed", "368", ""),
        (SendResult(0, None, "timeout", None, 1.0), "retry", "timeout", ""),
        (SendResult(0, None, "connection", None, 0.0), "retry", "connection", ""),
        (SendResult(502, None, "bad_answer", None, 0.0), "retry", "bad_answer", ""),
        (SendResult(404, None, "bad_answer", None, 0.0), "failed", "http_404", ""),
        (SendResult(200, None, "bad_answer", None, 0.0), "sent", "", ""),
    ],
)
def test_classify(result: SendResult, verdict: str, code: str, subcode: str) -> None:
    decision = classify(result)
    assert (decision.verdict, decision.code, decision.subcode) == (verdict, code, subcode)


def test_backoff_is_full_jitter_capped_and_retry_after_wins() -> None:
    assert backoff(1, rand=lambda: 1.0) == 0.25
    assert backoff(3, rand=lambda: 1.0) == 1.0
    assert backoff(30, rand=lambda: 1.0) == 30.0
    assert backoff(5, rand=lambda: 0.0) == 0.0
    assert backoff(1, rand=lambda: 0.5, retry_after=12) == 12
    assert backoff(1, rand=lambda: 0.5, retry_after=10**6) == 900


def test_usage_header_gives_the_time_to_regain_access() -> None:
    header = (
        b'{"123": [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 2}]}'
    )
    assert regain_access_s(header) == 120
    assert (
        regain_access_s(b'{"1": [{"call_count": 40, "estimated_time_to_regain_access": 0}]}')
        is None
    )
    assert regain_access_s(b"not json") is None
    assert regain_access_s(None) is None


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


BASE = {
    "FANOUT_API_TOKENS": "a=t1,b=t2",
    "FANOUT_PAGE_TOKENS": "1=EAAx",
    "FANOUT_TENANT_PAGES": "a=1",
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "FANOUT_API_TOKENS is not set"),
        ({**BASE, "FANOUT_API_TOKENS": "oops"}, "FANOUT_API_TOKENS='oops' is not a list"),
        ({**BASE, "FANOUT_SHARDS": "x"}, "FANOUT_SHARDS='x' is not an integer"),
        ({**BASE, "FANOUT_SHARDS": "0"}, "FANOUT_SHARDS=0 is out of range"),
        ({**BASE, "FANOUT_REDIS_URL": "localhost:6379"}, "FANOUT_REDIS_URL must start with"),
        ({**BASE, "FANOUT_LOG_LEVEL": "loud"}, "FANOUT_LOG_LEVEL='LOUD'"),
    ],
)
def test_producer_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        producer_settings(env)


def test_consumer_settings_defaults_and_errors() -> None:
    s = consumer_settings({"FANOUT_PAGE_TOKENS": "1=EAAsecret"})
    assert s.concurrency == 256 and s.shards == 4 and s.graph_version == "v21.0"
    assert s.block_ms * 1000 < 10_000_000  # shorter than the socket timeout
    assert "EAAsecret" not in repr(s)
    with pytest.raises(SettingsError, match="FANOUT_GRAPH_VERSION"):
        consumer_settings({"FANOUT_PAGE_TOKENS": "1=x", "FANOUT_GRAPH_VERSION": "21"})
    with pytest.raises(SettingsError, match="FANOUT_PAGE_TOKENS is not set"):
        consumer_settings({})


def test_rate_defaults_keep_a_page_alive() -> None:
    # Meta brakes a page above 40 msg/s; audio and video have 10/s of their own.
    s = consumer_settings({"FANOUT_PAGE_TOKENS": "1=x"})
    assert (s.rate_limit, s.media_rate_limit) == (40, 10)
    assert s.rate_warning() is None
    s = consumer_settings(
        {
            "FANOUT_PAGE_TOKENS": "1=x",
            "FANOUT_RATE_LIMIT": "0",  # no limit (fakes, benchmarks): no warning
            "FANOUT_MEDIA_RATE_LIMIT": "0",
            "FANOUT_PAGE_MEDIA_RATE_LIMITS": "1=5",
        }
    )
    assert (s.rate_limit, s.media_rate_limit) == (0, 0)
    assert (s.media_rate_for("1"), s.media_rate_for("2")) == (5, 0)
    assert s.rate_warning() is None
    s = consumer_settings(
        {
            "FANOUT_PAGE_TOKENS": "1=x",
            "FANOUT_RATE_LIMIT": "301",  # accepted, with one warning line
            "FANOUT_PAGE_RATE_LIMITS": "7=1000,8=300",
        }
    )
    assert s.rate_limit == 301 and s.rate_for("7") == 1000
    warning = s.rate_warning()
    assert warning is not None and "\n" not in warning
    assert warning.startswith("FANOUT_RATE_LIMIT=301, FANOUT_PAGE_RATE_LIMITS[7]=1000: above")
    with pytest.raises(SettingsError, match="FANOUT_MEDIA_RATE_LIMIT='x' is not an integer"):
        consumer_settings({"FANOUT_PAGE_TOKENS": "1=x", "FANOUT_MEDIA_RATE_LIMIT": "x"})


def test_cli_prints_one_line_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from services.cli import main

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("FANOUT_")}
    try:
        assert main(["consumer"]) == 2
    finally:
        os.environ.update(saved)
    assert capsys.readouterr().err == "fanout consumer: FANOUT_PAGE_TOKENS is not set\n"


def test_secret_never_shows() -> None:
    s = Secret("EAAsecret")
    assert "EAAsecret" not in repr(s) and "EAAsecret" not in str(s) and s.reveal() == "EAAsecret"


def test_job_keys_share_the_shard_hash_tag() -> None:
    job_id = keys.new_job_id(3)
    k = keys.JobKeys.of(job_id)
    assert k.shard == 3 and keys.shard_of(job_id) == 3
    for key in (k.hash, k.backlog, k.attempted, k.sent, k.failed, k.indoubt, k.errors, k.work):
        assert "{3}" in key
    assert keys.shard_of("../x") is None and keys.shard_of("3-zz") is None


def test_log_lines_are_json_and_scrub_tokens() -> None:
    formatter = JsonFormatter("consumer", ["supersecret"])
    record = logging.LogRecord(
        "x",
        logging.INFO,
        "f",
        1,
        "token supersecret EAAabcdefghijklmnop access_token=abc",
        None,
        None,
    )
    line = formatter.format(record)
    assert "supersecret" not in line and "EAAabcdefghijklmnop" not in line and 'abc"' not in line
    assert line.startswith("{") and '"service": "consumer"' in line
