"""The answer table, one case per row of Meta's error table that fanout decides by code and
subcode (shared/classify.py). Errors as Meta documents them:
https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes
"""

from __future__ import annotations

import pytest

from shared.classify import PAIRS, classify
from shared.models import GraphAnswer, GraphError
from shared.provider import SendResult


def _error(status: int, code: int, subcode: int | None, message: str = "x") -> SendResult:
    graph = GraphAnswer(error=GraphError(code=code, error_subcode=subcode, message=message))
    return SendResult(status, graph, None, None, 0.01)


ROWS = [
    # (HTTP status, code, subcode, verdict)
    pytest.param(400, 10, 2018278, "failed", id="outside-window-2018278"),
    pytest.param(400, 10, 2534022, "failed", id="outside-window-2534022"),
    pytest.param(400, 10, 2018108, "failed", id="cannot-receive-now"),
    pytest.param(400, 100, 2018001, "failed", id="no-matching-user"),
    pytest.param(400, 200, 1545041, "failed", id="person-unavailable-200"),
    pytest.param(400, 551, 1545041, "failed", id="person-unavailable-551"),
    pytest.param(400, 10, 1893015, "failed", id="opted-out"),
    pytest.param(400, 613, 2018338, "failed", id="too-many-tagged-messages-to-person"),
    pytest.param(400, 4, 2018354, "failed", id="marketing-frequency"),
    pytest.param(400, 100, 1893061, "failed", id="retired-tag"),
    pytest.param(400, 100, 33, "fatal", id="page-gone"),
    pytest.param(400, 10, 1893063, "restricted", id="page-restricted"),
    pytest.param(400, 190, 463, "fatal", id="token-invalidated"),
    pytest.param(400, 190, None, "fatal", id="token-invalid"),
    # The same codes without their subcode keep their code's meaning.
    pytest.param(400, 613, None, "throttled", id="613-alone-throttles-the-page"),
    pytest.param(400, 613, 2534040, "throttled", id="613-rate-limit-subcode"),
    pytest.param(400, 4, None, "throttled", id="4-alone-throttles"),
    pytest.param(400, 10, None, "failed", id="10-alone-fails-the-person"),
    pytest.param(500, 2, None, "retry", id="2-transient"),
    pytest.param(503, 2, None, "retry", id="2-outage-503"),
    pytest.param(500, 1, None, "retry", id="1-unknown"),
    pytest.param(400, 1200, None, "retry", id="1200-temporary-send-failure"),
]


@pytest.mark.parametrize(("status", "code", "subcode", "verdict"), ROWS)
def test_answer_table_row(status: int, code: int, subcode: int | None, verdict: str) -> None:
    decision = classify(_error(status, code, subcode, "Meta's words"))
    assert decision.verdict == verdict
    assert decision.code == str(code)
    assert decision.subcode == ("" if subcode is None else str(subcode))
    assert decision.message == "Meta's words"


def test_every_pair_row_is_tested() -> None:
    tested = {(p.values[1], p.values[2]) for p in ROWS}
    assert set(PAIRS) <= tested, set(PAIRS) - tested
