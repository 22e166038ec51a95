"""The circuit breaker and the retry budget, piece by piece: when a page trips, how the fleet
is held to one probe at a time on a real Redis, what closes it, and what a recipient's
transient answers cost while its page is healthy or held."""

from __future__ import annotations

import asyncio

import pytest
from conftest import RedisServer

from services.consumer.limiter import PageLimiter
from services.consumer.pagehealth import PageHealth, RetryBudget
from shared import keys, metrics
from shared.redisconn import connect
from shared.scripts import Scripts


def _health() -> PageHealth:
    return PageHealth(None, "5")  # type: ignore[arg-type]  # no Redis for the local view


def test_trips_only_when_answers_turn_mostly_transient() -> None:
    health = _health()
    for n in range(40):
        health.record(False, True, f"ok{n}")
    for n in range(19):
        health.record(True, True, f"p{n}")
    assert not health.should_trip()  # 19 of 50: not mostly, and below the minimum count
    for n in range(6):
        health.record(True, True, f"q{n}")
    assert health.should_trip()  # 25 of the last 50


def test_a_few_people_answered_code_2_again_and_again_do_not_trip() -> None:
    health = _health()
    for n in range(50):
        health.record(True, False, f"blocked{n % 9}")  # nine people, all transient
    assert not health.should_trip()
    health.record(True, False, "a tenth")
    assert health.should_trip()


@pytest.mark.parametrize(("transient", "healthy"), [(0, True), (4, True), (5, False), (30, False)])
def test_healthy_needs_enough_first_answers_and_few_transient(
    transient: int, healthy: bool
) -> None:
    health = _health()
    for _ in range(100 - transient):
        health.record(False, True, "x")
    for _ in range(transient):
        health.record(True, True, "y")
    for _ in range(40):  # retries of a few recipients (code 2 again and again) do not count
        health.record(True, False, "z")
    assert health.healthy() is healthy
    fresh = _health()
    fresh.record(False, True, "x")
    assert not fresh.healthy()  # one answer says nothing about the page


def test_budget_strikes_only_while_the_page_is_otherwise_healthy() -> None:
    budget = RetryBudget(now=0.0, held_s=0.0, answered=0)
    # An unhealthy page: no strikes, only time counts.
    assert not any(budget.spent(t, 0.0, False, t, 5, 600.0) for t in range(1, 100))
    # Healthy, but nobody else got an answer since: not a strike either.
    assert not any(budget.spent(100.0 + i, 0.0, True, 99, 5, 600.0) for i in range(10))
    # Healthy and others answered in between: five strikes and out.
    strikes = [budget.spent(200.0 + i, 0.0, True, 100 + i, 5, 600.0) for i in range(5)]
    assert strikes == [False, False, False, False, True]


def test_budget_in_time_does_not_count_the_held_time() -> None:
    budget = RetryBudget(now=10.0, held_s=3.0, answered=0)
    # 700 s later, of which 650 s the page was held: 50 s spent of 600.
    assert not budget.spent(710.0, 653.0, False, 0, 5, 600.0)
    assert budget.spent(710.0, 100.0, False, 0, 5, 600.0)  # held only 97 s of it: spent
    # An outage never ends for these recipients: after an hour held plus the budget, they fail.
    assert budget.spent(10.0 + 3600 + 601, 3.0 + 3600 + 601, False, 0, 5, 600.0)


def test_breaker_holds_the_fleet_to_one_probe_and_closes_on_an_answer(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        client = connect(redis_server.url)
        scripts = Scripts(client)
        one, two = PageLimiter(scripts, "5", 0, 50), PageLimiter(scripts, "5", 0, 50)
        held_before = metrics.PAGES_HELD.labels("provider_outage")._value.get()
        await one.health.trip("2")
        assert metrics.PAGES_HELD.labels("provider_outage")._value.get() == held_before + 1
        # The first probe is due a second after the trip: nobody gets a permit before.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(two.take(100), 0.5)
        assert await asyncio.wait_for(two.take(100), 2.0) == 1  # the probe: one permit
        assert two.health.take_probe() and two.health.held
        with pytest.raises(TimeoutError):  # one probe at a time, fleet-wide
            await asyncio.wait_for(one.take(100), 1.5)
        await two.health.probe_answered(transient=True)  # still down: next probe in 1 s
        assert await asyncio.wait_for(one.take(100), 2.0) == 1
        assert one.health.take_probe()
        await one.health.probe_answered(transient=False)  # it answers: closed
        assert await asyncio.wait_for(two.take(100), 1.0) == 100  # full rate (unlimited)
        assert not two.health.held
        assert two.health.held_s(asyncio.get_running_loop().time()) > 1.0
        state = await client.hgetall(keys.rate("5"))
        assert b"breaker" not in state and state[b"breaker_trips"] == b"1"
        await client.aclose()

    asyncio.run(main())
