"""Per-deployment metrics: attempts, in-flight, time to first token, fallbacks, and the cooldown
gauge read from the shared state when Prometheus scrapes."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from prometheus_client import REGISTRY

from agents.providers import catalog
from agents.router import Outcome, acquire, release
from agents.router.metrics import DeploymentCooldownCollector, record_fallback
from agents.router.state import set_state
from relay.observability import metrics
from tests.router.conftest import deployment, model
from tests.support.ports import free_port

pytestmark = pytest.mark.django_db

PAIR = model(deployment("7", name="primary"), deployment("8", name="backup", priority=1), name="fake-large",
             strategy="priority", fallbacks=("local-mini",))


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def cooldown() -> dict[tuple[str, str], float]:
    [family] = DeploymentCooldownCollector().collect()
    return {(s.labels["model"], s.labels["deployment"]): s.value for s in family.samples}


def test_attempts_in_flight_and_time_to_first_token_per_deployment(states, clock):
    primary = {"model": "fake-large", "deployment": "primary"}
    before = {outcome: sample("deployment_requests_total", outcome=outcome, **primary)
              for outcome in ("success", "failure", "neutral")}
    ttft_before = sample("deployment_time_to_first_token_seconds_count", **primary)
    in_flight = sample("deployment_in_flight", **primary)  # other tests' picks may stay unreleased

    async def scenario():
        pick = await acquire(PAIR)
        assert sample("deployment_in_flight", **primary) == in_flight + 1
        await release(pick, outcome=Outcome.SUCCESS, ttft=0.4)
        assert sample("deployment_in_flight", **primary) == in_flight
        await release(await acquire(PAIR), outcome=Outcome.FAILURE)
        await release(await acquire(PAIR), outcome=Outcome.NEUTRAL)

    async_to_sync(scenario)()
    after = {outcome: sample("deployment_requests_total", outcome=outcome, **primary) - before[outcome]
             for outcome in before}
    assert after == {"success": 1, "failure": 1, "neutral": 1}
    assert sample("deployment_time_to_first_token_seconds_count", **primary) - ttft_before == 1


def test_the_cooldown_gauge_reads_the_shared_state_of_the_catalogs_deployments(states, clock, monkeypatch):
    scraped = model(deployment("17", name="east"), deployment("18", name="west", priority=1), name="scraped",
                    strategy="priority")
    monkeypatch.setattr(catalog, "available_models", lambda: [scraped, model(name="local-mini")])
    assert cooldown() == {("scraped", "east"): 0.0, ("scraped", "west"): 0.0}
    # The collector put every deployment's series at zero, so panels have data before any attempt.
    assert REGISTRY.get_sample_value("deployment_requests_total",
                                     {"model": "scraped", "deployment": "west", "outcome": "failure"}) == 0

    async def scenario():
        await release(await acquire(scraped), outcome=Outcome.FAILURE, retry_after=5)

    async_to_sync(scenario)()
    assert cooldown() == {("scraped", "east"): 1.0, ("scraped", "west"): 0.0}
    clock.advance(5)  # half-open: still not serving traffic freely
    assert cooldown()[("scraped", "east")] == 1.0


def test_the_cooldown_gauge_is_empty_when_the_state_is_unreachable(clock, monkeypatch):
    from agents.router.state_redis import RedisState

    monkeypatch.setattr(catalog, "available_models", lambda: [PAIR])
    previous = set_state(RedisState(f"redis://127.0.0.1:{free_port()}/0", "{nowhere}:router:"))
    try:
        assert cooldown() == {}
    finally:
        set_state(previous)


def test_fallbacks_are_counted_with_bounded_labels(monkeypatch):
    monkeypatch.setattr(metrics.known_models, "names", frozenset({"fake-large", "local-mini"}))

    def counted(model_, fallback, reason):
        return sample("model_fallbacks_total", model=model_, fallback=fallback, reason=reason)

    before = counted("fake-large", "local-mini", "unavailable"), counted("other", "other", "other")
    record_fallback("fake-large", "local-mini", "unavailable")
    record_fallback("made-up", "also-made-up", "whatever")
    assert counted("fake-large", "local-mini", "unavailable") - before[0] == 1
    assert counted("other", "other", "other") - before[1] == 1
