"""The routing state's rules, proven on both implementations (in-process and Redis) with the
caller's clock: strategies, rpm/tpm limits, the circuit breaker and self-healing leases."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.router.state_base import MAX_COOLDOWN, Breaker, Candidate, Transition, minute_of
from tests.router.conftest import NOW

BREAKER = Breaker(allowed_fails=3, failure_window=60.0, cooldown=30.0)
PROBE_TTL = 70.0


def run(coro):
    return asyncio.run(coro)


async def take(state, *candidates: Candidate, now=NOW, rand=0.0, tokens=0, strategy="least_busy", ttl=30.0):
    """(the key chosen or None, the lease, the Acquired)."""
    lease = uuid.uuid4().hex
    got = await state.acquire(list(candidates), strategy=strategy, lease=lease, now=now, ttl=ttl, tokens=tokens,
                              rand=rand, probe_ttl=PROBE_TTL)
    return got.key, lease, got


async def give(state, key, lease, outcome, *, now=NOW, breaker=BREAKER, **fields) -> Transition | None:
    return await state.release(key, lease, outcome=outcome, now=now, breaker=breaker, **fields)


async def fail(state, candidate: Candidate, *, now=NOW, **fields) -> Transition | None:
    key, lease, _ = await take(state, candidate, now=now)
    assert key == candidate.key
    return await give(state, key, lease, "failure", now=now, **fields)


async def trip(state, candidate: Candidate, *, now=NOW, seconds=5.0) -> None:
    assert (await fail(state, candidate, now=now, retry_after=seconds)).entered


A, B, C = Candidate("a"), Candidate("b"), Candidate("c")


def test_least_busy_picks_the_fewest_live_leases_and_breaks_ties_at_random(state):
    async def scenario():
        for candidate in (A, A, C):
            await take(state, candidate)
        assert (await take(state, A, B, C, rand=0.99))[0] == "b"  # the one least busy, whatever the draw
        assert (await take(state, A, B, C, rand=0.99))[0] == "c"  # b and c tie at 1: the draw decides
        assert (await take(state, A, B, C, rand=0.0))[0] == "b"

    run(scenario())


def test_lowest_latency_follows_the_moving_average_and_measures_the_unmeasured_first(state):
    async def scenario():
        async def measured(candidate, ttft):
            key, lease, _ = await take(state, candidate)
            await give(state, key, lease, "success", ttft=ttft)

        async def pick():
            key, lease, _ = await take(state, A, B, C, strategy="lowest_latency", rand=0.99)
            await give(state, key, lease, "neutral")
            return key

        await measured(A, 0.5)
        await measured(B, 0.2)
        assert await pick() == "c"  # never measured counts as 0, so it gets measured
        await measured(C, 0.9)
        assert await pick() == "b"
        await measured(B, 1.0)  # 0.2 + 0.3 * (1.0 - 0.2) = 0.44: still the fastest
        assert await pick() == "b"
        await measured(B, 1.0)  # 0.608: now slower than a
        assert await pick() == "a"
        assert [row["ttft_avg"] for row in state.snapshot(["a", "b", "c"], NOW)] == pytest.approx([0.5, 0.608, 0.9])

    run(scenario())


def test_weighted_random_draws_by_weight_and_ignores_load(state):
    light, heavy = Candidate("a", weight=1), Candidate("b", weight=3)

    async def scenario():
        for _ in range(5):
            await take(state, heavy)
        picks = [(await take(state, light, heavy, strategy="weighted_random", rand=r))[0] for r in (0.2, 0.3, 0.99)]
        assert picks == ["a", "b", "b"]  # a holds [0, 0.25) of the draw, b the rest

    run(scenario())


def test_priority_uses_a_lower_priority_only_when_every_higher_one_is_unavailable(state):
    first, second, backup = Candidate("a", priority=0), Candidate("b", priority=0, weight=3), \
        Candidate("c", priority=1, weight=100)

    async def scenario():
        picks = [(await take(state, first, second, backup, strategy="priority", rand=r))[0]
                 for r in (0.0, 0.2, 0.3, 0.99)]
        assert picks == ["a", "a", "b", "b"]  # ties by weight; the backup's weight does not matter
        await trip(state, first)
        assert (await take(state, first, second, backup, strategy="priority", rand=0.0))[0] == "b"
        await trip(state, second)
        assert (await take(state, first, second, backup, strategy="priority", rand=0.0))[0] == "c"

    run(scenario())


def test_rpm_limit_skips_a_deployment_for_the_rest_of_its_minute(state):
    limited, spare = Candidate("a", rpm_limit=2), Candidate("b", priority=1)

    async def scenario():
        async def pick(now):
            return (await take(state, limited, spare, strategy="priority", now=now))[0]

        assert [await pick(NOW), await pick(NOW + 1), await pick(NOW + 2), await pick(NOW + 59.9)] == \
            ["a", "a", "b", "b"]
        assert await pick(NOW + 60) == "a"  # a new minute
        key, _, got = await take(state, Candidate("c", rpm_limit=1), now=NOW + 70)
        key, _, got = await take(state, Candidate("c", rpm_limit=1), now=NOW + 80)
        assert (key, got.reason, got.retry_after) == (None, "limits", 40.0)

    run(scenario())


def test_tpm_limit_counts_prompt_tokens_when_acquired_and_output_when_released(state):
    limited, spare = Candidate("a", tpm_limit=100), Candidate("b", priority=1)

    async def scenario():
        async def pick(tokens):
            return await take(state, limited, spare, strategy="priority", tokens=tokens)

        key, lease, _ = await pick(60)
        assert key == "a"
        assert (await pick(60))[0] == "b"  # 60 + 60 > 100
        await give(state, "a", lease, "success", tokens=30, count_tokens=True)  # output: 90 used
        assert (await pick(10))[0] == "a"  # exactly 100
        assert (await pick(1))[0] == "b"

    run(scenario())


def test_an_attempt_never_sent_gives_its_request_and_tokens_back_to_the_minute(state):
    limited, spare = Candidate("a", rpm_limit=1, tpm_limit=100), Candidate("b", priority=1)

    async def pick(now, tokens=0):
        return await take(state, limited, spare, strategy="priority", tokens=tokens, now=now)

    async def scenario():
        key, lease, _ = await pick(NOW, tokens=60)
        assert key == "a" and (await pick(NOW + 1))[0] == "b"  # its one request of the minute is taken
        await give(state, "a", lease, "neutral", now=NOW + 2, uncount=(minute_of(NOW), 60))
        key, lease, _ = await pick(NOW + 3, tokens=100)  # the request and all 100 tokens are free again
        assert key == "a"
        await give(state, "a", lease, "neutral", now=NOW + 4)  # sent, then cancelled: it stays counted
        assert (await pick(NOW + 5))[0] == "b"
        await give(state, "a", "gone", "neutral", now=NOW + 6, uncount=(minute_of(NOW) - 5, 60))  # a minute gone
        assert (await pick(NOW + 7))[0] == "b"

    run(scenario())


def test_limits_hold_under_concurrency_across_two_instances(states):
    limited, spare = Candidate("a", rpm_limit=10), Candidate("b", priority=1)

    async def scenario():
        picks = await asyncio.gather(*(take(states[i % 2], limited, spare, strategy="priority") for i in range(50)))
        return [key for key, _, _ in picks]

    keys = run(scenario())
    assert (keys.count("a"), keys.count("b")) == (10, 40)


def test_allowed_fails_within_the_window_open_the_cooldown(state):
    async def scenario():
        assert await fail(state, A, now=NOW) is None
        assert await fail(state, A, now=NOW + 10) is None
        assert await fail(state, A, now=NOW + 20) == Transition(True, "failures", 30.0)
        key, _, got = await take(state, A, now=NOW + 49.9)
        assert (key, got.reason, round(got.retry_after, 6)) == (None, "cooldown", 0.1)
        key, _, got = await take(state, A, now=NOW + 50)
        assert (key, got.probe) == ("a", True)  # the cooldown is over: half-open

    run(scenario())


def test_failures_spread_beyond_the_window_do_not_open_it(state):
    async def scenario():
        for now in (NOW, NOW + 40, NOW + 80):  # never three within 60 s
            assert await fail(state, A, now=now) is None
        assert (await take(state, A, now=NOW + 81))[0] == "a"
        assert (await fail(state, A, now=NOW + 90)).entered  # +40, +80, +90: three within 60 s

    run(scenario())


def test_retry_after_sets_the_cooldown_length(state):
    async def scenario():
        assert await fail(state, A, retry_after=7.0) == Transition(True, "retry_after", 7.0)
        key, _, got = await take(state, A, now=NOW + 6.5)
        assert (key, got.reason, got.retry_after) == (None, "cooldown", 0.5)
        assert (await take(state, A, now=NOW + 7))[0] == "a"
        assert (await fail(state, B, retry_after=10 ** 7)).seconds == MAX_COOLDOWN

    run(scenario())


def test_half_open_lets_exactly_one_probe_through_among_many_callers(states):
    async def scenario():
        await trip(states[0], A, seconds=5)
        later = NOW + 5
        picks = await asyncio.gather(*(take(states[i % 2], A, B, now=later) for i in range(20)))
        probes = [got for key, _, got in picks if key == "a"]
        assert len(probes) == 1 and probes[0].probe
        assert [key for key, _, _ in picks].count("b") == 19
        # A healed deployment gets its probe first, whatever the strategy would prefer.
        await trip(states[0], C, seconds=5)
        key, _, got = await take(states[1], B, C, strategy="priority", now=later)
        assert (key, got.probe) == ("c", True)
        # The claim outlives a probe whose instance died only by the probe TTL.
        assert (await take(states[1], A, now=later + PROBE_TTL - 1))[0] is None
        key, _, got = await take(states[1], A, now=later + PROBE_TTL)
        assert (key, got.probe) == ("a", True)

    run(scenario())


def test_probe_success_closes_the_breaker_and_probe_failure_reopens_it(state):
    async def scenario():
        await trip(state, A, seconds=5)
        key, probe, got = await take(state, A, now=NOW + 5)
        assert got.probe
        assert await give(state, "a", probe, "success", now=NOW + 6) == Transition(False, "probe_succeeded", 6.0)
        key, _, got = await take(state, A, now=NOW + 6)
        assert (key, got.probe) == ("a", False)
        assert state.snapshot(["a"], NOW + 6)[0]["state"] == "closed"

        await trip(state, A, now=NOW + 10, seconds=5)
        _, probe, got = await take(state, A, now=NOW + 15)
        assert got.probe
        assert await give(state, "a", probe, "failure", now=NOW + 16) == Transition(True, "probe_failed", 30.0)
        row = state.snapshot(["a"], NOW + 16)[0]
        assert (row["state"], row["cooldown_until"]) == ("open", NOW + 46)

    run(scenario())


def test_exactly_one_caller_sees_each_transition_when_many_finish_together(states):
    async def scenario():
        held = [await take(states[0], A) for _ in range(12)]
        changes = await asyncio.gather(*(give(states[i % 2], key, lease, "failure", now=NOW + 1)
                                         for i, (key, lease, _) in enumerate(held)))
        assert [c for c in changes if c is not None] == [Transition(True, "failures", 30.0)]

        held = [await take(states[0], B) for _ in range(8)]  # in flight when b trips
        await trip(states[0], B, now=NOW + 2)
        changes = await asyncio.gather(*(give(states[i % 2], key, lease, "success", now=NOW + 3)
                                         for i, (key, lease, _) in enumerate(held)))
        assert [c for c in changes if c is not None] == [Transition(False, "success", 1.0)]

    run(scenario())


def test_neutral_outcomes_neither_count_as_failures_nor_hold_the_probe(state):
    async def scenario():
        for _ in range(5):
            key, lease, _ = await take(state, A)
            assert await give(state, key, lease, "neutral") is None
        assert state.snapshot(["a"], NOW)[0]["state"] == "closed"
        await trip(state, A, seconds=5)
        _, probe, got = await take(state, A, now=NOW + 5)
        assert got.probe and await give(state, "a", probe, "neutral", now=NOW + 5) is None
        key, _, got = await take(state, A, now=NOW + 5)  # the next caller probes
        assert (key, got.probe) == ("a", True)

    run(scenario())


def test_leases_of_an_instance_that_died_expire_on_their_own(states):
    crashed, survivor = states

    async def scenario():
        for _ in range(3):
            await take(crashed, A, ttl=30.0)  # never released: the instance died
        assert survivor.snapshot(["a"], NOW + 29.9)[0]["in_flight"] == 3
        assert (await take(survivor, A, B, now=NOW + 29.9))[0] == "b"
        assert survivor.snapshot(["a"], NOW + 30)[0]["in_flight"] == 0
        assert (await take(survivor, A, B, now=NOW + 30, rand=0.99))[0] == "a"  # now the least busy

    run(scenario())


def test_renewal_keeps_live_leases_and_does_not_revive_expired_ones(state):
    async def scenario():
        _, kept, _ = await take(state, A, ttl=30.0)
        _, lapsed, _ = await take(state, A, ttl=10.0)
        await state.renew([("a", kept), ("a", lapsed)], now=NOW + 20, expiry=NOW + 50)
        assert state.snapshot(["a"], NOW + 49)[0]["in_flight"] == 1
        assert state.snapshot(["a"], NOW + 50)[0]["in_flight"] == 0

    run(scenario())


def test_snapshot_reports_each_state(state):
    async def scenario():
        _, lease, _ = await take(state, A)
        await give(state, "a", lease, "success", ttft=0.25)
        await trip(state, B, seconds=5)
        rows = state.snapshot(["a", "b", "c"], NOW + 1)
        assert rows == [
            {"key": "a", "in_flight": 0, "state": "closed", "cooldown_until": None, "ttft_avg": 0.25},
            {"key": "b", "in_flight": 0, "state": "open", "cooldown_until": NOW + 5, "ttft_avg": None},
            {"key": "c", "in_flight": 0, "state": "closed", "cooldown_until": None, "ttft_avg": None}]
        assert state.snapshot(["b"], NOW + 5)[0]["state"] == "half_open"

    run(scenario())
