"""Which exceptions the cluster client turns into a 503-able ClusterUnavailable (no Redis needed:
the classification is by where redis-py raised them, which a compiled stand-in reproduces)."""

from __future__ import annotations

import pytest

from shared.redisconn import ClusterUnavailable, _unavailable


def _raised_in(filename: str) -> AttributeError:
    code = compile("None.writelines([b''])", filename, "exec")
    with pytest.raises(AttributeError) as info:
        exec(code, {})
    return info.value


def test_a_writer_gone_inside_redis_py_is_unavailable() -> None:
    exc = _raised_in("/venv/lib/python3.11/site-packages/redis/asyncio/connection.py")
    assert isinstance(_unavailable(exc), ClusterUnavailable)


def test_an_attribute_error_of_ours_stays_a_bug() -> None:
    exc = _raised_in("/work/services/producer/jobs.py")
    assert _unavailable(exc) is exc
