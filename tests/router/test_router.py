"""agents.router's public interface on both state implementations: picks and leases, the one
audit event per breaker transition, the background lease renewal, and routing without Redis."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

import agents.router as router
from accounts.models import User
from agents.router import NoDeployment, Outcome, acquire, release, snapshot
from agents.router.state import get_state, set_state
from audit import actions, context
from audit.models import AuditEvent
from tests.router.conftest import NOW, deployment, model
from tests.support.ports import free_port

pytestmark = pytest.mark.django_db

PAIR = model(deployment("7", name="primary"), deployment("8", name="backup", priority=1), name="fake-large",
             strategy="priority", allowed_fails=3, cooldown=30.0)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def test_a_pick_holds_a_lease_until_released(states, clock, rand):
    async def scenario():
        pick = await acquire(PAIR)
        assert (pick.model, pick.deployment.name, pick.probe, len(pick.lease)) == (PAIR, "primary", False, 32)
        assert [row["in_flight"] for row in snapshot(PAIR)] == [1, 0]
        await release(pick, outcome=Outcome.SUCCESS, ttft=0.2)
        assert [(row["name"], row["in_flight"], row["ttft_avg"]) for row in snapshot(PAIR)] == [
            ("primary", 0, 0.2), ("backup", 0, None)]
        assert (await acquire(PAIR, exclude=frozenset({"7"}))).deployment.name == "backup"

    async_to_sync(scenario)()


def test_a_deployment_acquired_ahead_and_dropped_keeps_its_rpm(states, clock, rand):
    # Control: router.Ahead.drop releases with sent=False. Counted, the request the caller never
    # sent (its opening failed, its client left) used the deployment's one request of the minute.
    limited = model(deployment("9", name="limited", rpm_limit=1), name="fake-large")

    async def scenario():
        ahead = router.Ahead(limited, tokens=10)
        await ahead.drop()
        pick = await acquire(limited)
        await release(pick, outcome=Outcome.SUCCESS, ttft=0.1)
        with pytest.raises(NoDeployment) as refused:  # the one it did send counts
            await acquire(limited)
        return pick.deployment.name, refused.value.reason

    assert async_to_sync(scenario)() == ("limited", "limits")


@pytest.mark.parametrize(("chosen", "exclude", "reason"), [
    (model(), frozenset(), "none"),
    (PAIR, frozenset({"7", "8"}), "exhausted"),
])
def test_nothing_to_route_to_says_why(states, clock, chosen, exclude, reason):
    with pytest.raises(NoDeployment) as refused:
        async_to_sync(acquire)(chosen, exclude=exclude)
    assert (refused.value.reason, refused.value.retry_after) == (reason, None)


def test_every_deployment_cooling_down_says_when_one_reopens(states, clock):
    async def scenario():
        for _ in range(2):
            pick = await acquire(PAIR)
            await release(pick, outcome=Outcome.FAILURE, retry_after=12)
        clock.advance(2)
        with pytest.raises(NoDeployment) as refused:
            await acquire(PAIR)
        assert (refused.value.reason, refused.value.retry_after) == ("cooldown", 10.0)

    async_to_sync(scenario)()


def test_many_callers_failing_together_record_one_cooldown_entered_event(states, clock, rand, users):
    solo = model(deployment("9", name="only"), name="fake-large", allowed_fails=3, cooldown=30.0)

    async def scenario():
        picks = [await acquire(solo) for _ in range(10)]
        await asyncio.gather(*(release(pick, outcome=Outcome.FAILURE) for pick in picks))

    # A request of some organization's user is what fails; the deployment's event is not theirs.
    with context.bind(actor_id=users["admin"].pk, organization_id=users["admin"].organization_id):
        async_to_sync(scenario)()
    [entered] = events(actions.DEPLOYMENT_COOLDOWN_ENTERED)
    assert (entered.organization_id, entered.actor_id, entered.resource) == (None, None, "model_deployment:9")
    assert entered.metadata == {"model": "fake-large", "deployment": "only", "reason": "failures", "seconds": 30.0}
    assert snapshot(solo)[0]["state"] == "open"
    assert not events(actions.DEPLOYMENT_COOLDOWN_LEFT)


def test_the_probe_after_a_cooldown_records_one_cooldown_left_event(states, clock, rand):
    async def scenario():
        pick = await acquire(PAIR)
        await release(pick, outcome=Outcome.FAILURE, retry_after=5)
        clock.advance(5)
        probe = await acquire(PAIR)
        assert (probe.deployment.name, probe.probe) == ("primary", True)  # a healed deployment is tried first
        others = await asyncio.gather(*(acquire(PAIR) for _ in range(5)))
        assert {other.deployment.name for other in others} == {"backup"}  # one probe only
        clock.advance(1)
        await release(probe, outcome=Outcome.SUCCESS, ttft=0.3)
        assert (await acquire(PAIR)).deployment.name == "primary"

    async_to_sync(scenario)()
    [entered] = events(actions.DEPLOYMENT_COOLDOWN_ENTERED)
    [left] = events(actions.DEPLOYMENT_COOLDOWN_LEFT)
    assert entered.metadata["reason"] == "retry_after" and entered.metadata["seconds"] == 5.0
    assert left.metadata == {"model": "fake-large", "deployment": "primary", "reason": "probe_succeeded",
                             "seconds": 6.0}


def test_platform_superusers_read_the_cooldown_events_and_organization_admins_do_not(states, clock, users,
                                                                                     client_for):
    async def scenario():
        await release(await acquire(PAIR), outcome=Outcome.FAILURE, retry_after=5)

    async_to_sync(scenario)()
    root = User.objects.create_superuser("root", "root@example.com", "x" * 20)
    wanted = {"action": actions.DEPLOYMENT_COOLDOWN_ENTERED}
    seen = client_for(root).get(reverse("audit-events"), wanted).json()["results"]
    assert [(e["action"], e["organization_id"]) for e in seen] == [(actions.DEPLOYMENT_COOLDOWN_ENTERED, None)]
    assert client_for(users["admin"]).get(reverse("audit-events"), wanted).json()["results"] == []


def test_the_process_renews_its_live_leases_in_the_background(states, clock, monkeypatch):
    state = get_state()
    renewed = []

    async def scenario():
        done = asyncio.Event()
        original = state.renew

        async def renew(leases, *, now, expiry):
            await original(leases, now=now, expiry=expiry)
            renewed.append(len(leases))
            done.set()

        monkeypatch.setattr(state, "renew", renew)
        monkeypatch.setattr(router._keeper, "interval", 0)
        pick = await acquire(PAIR)
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == "relay-router-leases"]
        clock.advance(25)
        await done.wait()  # renewed at +25: it lives until +55
        clock.advance(20)
        assert snapshot(PAIR)[0]["in_flight"] == 1
        await release(pick, outcome=Outcome.NEUTRAL)
        await task  # nothing left to renew: the task ends
        assert snapshot(PAIR)[0]["in_flight"] == 0

    async_to_sync(scenario)()
    assert renewed and set(renewed) == {1}


def test_without_redis_routing_goes_on_without_shared_state(clock, settings):
    from agents.router.state_redis import RedisState

    previous = set_state(RedisState(f"redis://127.0.0.1:{free_port()}/0", "{nowhere}:router:"))
    try:
        async def scenario():
            picks = [await acquire(PAIR) for _ in range(20)]
            assert {pick.deployment.name for pick in picks} == {"primary", "backup"}  # weighted random
            for pick in picks:
                await release(pick, outcome=Outcome.FAILURE)  # logged, not raised

        async_to_sync(scenario)()
        assert snapshot(PAIR) == []
    finally:
        set_state(previous)


def test_one_round_trip_per_acquire_and_per_release(redis_state, clock, monkeypatch):
    calls = []
    original = redis_state.clients.run

    async def run(script, *args):
        calls.append(script)
        return await original(script, *args)

    monkeypatch.setattr(redis_state.clients, "run", run)

    async def scenario():
        pick = await acquire(PAIR)
        assert len(calls) == 1
        await release(pick, outcome=Outcome.FAILURE, retry_after=3)  # a transition too
        assert len(calls) == 2

    async_to_sync(scenario)()


def test_the_clock_is_the_routers(states, clock):
    """Every window follows agents.router.clock, not the wall clock."""
    async def scenario():
        pick = await acquire(PAIR)
        await release(pick, outcome=Outcome.FAILURE, retry_after=5)
        clock.now = NOW + 4.9
        assert (await acquire(PAIR)).deployment.name == "backup"
        clock.now = NOW + 5
        assert (await acquire(PAIR)).deployment.name == "primary"

    async_to_sync(scenario)()
