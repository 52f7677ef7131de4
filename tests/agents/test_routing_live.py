"""Three upstreams behind one model, two Relay processes in front: health, retries and fallbacks.

One healthy, one slow and one failing fake upstream (5xx, 429 with Retry-After, connection
refused, a stream that drops mid-way) serve "fake-large"; two uvicorn processes share the test's
database and Redis, as two instances of a cluster do. Requests alternate between them, so the
failures that trip the failing deployment are counted across the cluster. What a client sees:
no request fails before its first token while a healthy deployment exists, traffic leaves the
failing deployment after `allowed_fails` failures and comes back after the cooldown, and the
books are exact afterwards (`reconcile` clean).
"""

from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from audit.models import AuditEvent
from billing.models import Budget, ModelPrice, UsageRecord
from tests.billing.test_live_budgets import ledger_figures, production_services, start_workers
from tests.conftest import require
from tests.reconciled import assert_reconciled
from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 60  # seconds; waits end on an event, the ceiling matters only when the behaviour is broken
COOLDOWN = 5  # seconds: long beside a few requests on a loaded machine, short enough to wait out once


@pytest.fixture
def upstreams():
    with FakeUpstream() as healthy, FakeUpstream(FakeUpstreamConfig(ttft=0.2)) as slow, FakeUpstream() as failing:
        yield SimpleNamespace(healthy=healthy, slow=slow, failing=failing)


@pytest.fixture
def cluster(upstreams, users):
    """The model, a budgeted key and two Relay processes; the books checked when the test is done."""
    require(production_services(), "two Relay processes share state through PostgreSQL and Redis")
    create_endpoint("fake-backup", deployments=[{"name": "backup", "base_url": upstreams.healthy.base_url,
                                                 "upstream_model": "fake-large"}])
    # The failing deployment first in priority, so each request tries it while it is not cooling down.
    create_endpoint("fake-large", routing_strategy="priority", allowed_fails=3, cooldown_seconds=COOLDOWN,
                    num_retries=2, deployments=[
                        {"name": "failing", "base_url": upstreams.failing.base_url, "priority": 0},
                        {"name": "healthy", "base_url": upstreams.healthy.base_url, "priority": 1},
                        {"name": "slow", "base_url": upstreams.slow.base_url, "priority": 1}])
    create_endpoint("fake-solo", fallbacks=["fake-backup"], num_retries=1, deployments=[
        {"name": "solo", "base_url": upstreams.failing.base_url, "upstream_model": "fake-large"}])
    for name, low, high in (("fake-large", "0.001", "0.002"), ("fake-backup", "0.004", "0.008"),
                            ("fake-solo", "0.001", "0.002")):
        ModelPrice.objects.create(model=name, input_per_1k=Decimal(low), output_per_1k=Decimal(high))
    issued = create_api_key(users["user"], "routing")
    budget = Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=issued.key,
                                   period="monthly", limit_usd=Decimal("50"), hard=True, alert_thresholds=[])
    workers = start_workers(2)
    cluster = SimpleNamespace(urls=[w.url for w in workers], secret=issued.secret, budget=budget, sent=0)
    try:
        yield cluster
    finally:
        for worker in workers:
            worker.stop()
    records = UsageRecord.objects.filter(api_key=issued.key)
    spent, reserved = ledger_figures(budget)
    assert (spent, reserved) == (int(sum(r.cost for r in records) * 10**9), 0)
    assert_reconciled()


def ask(cluster, model="fake-large", query="Say hello.") -> list[dict]:
    """One streamed answer, from the two instances in turn."""
    url = cluster.urls[cluster.sent % len(cluster.urls)]
    cluster.sent += 1
    body = {"query": query, "agent_type": "general", "model": model, "cache": False}
    with httpx.Client(timeout=WAIT) as client, client.stream(
            "POST", f"{url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {cluster.secret}"}) as r:
        assert r.status_code == 200, r.read()
        return parse_sse(r.iter_lines())


def complete(events) -> bool:
    return events[-1]["status"] == "complete" and not any(e["type"] == "error" for e in events)


def served(upstream) -> int:
    """Requests an upstream answered in full."""
    return sum(1 for r in upstream.requests if r.status == 200 and r.completed)


def cooldowns(action: str) -> list[dict]:
    return [e.metadata for e in AuditEvent.objects.filter(action=f"deployment.{action}").order_by("sequence")]


def until(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"waited {WAIT} s for {what}")


def test_traffic_leaves_a_failing_deployment_after_allowed_fails_and_returns_after_cooldown(upstreams, cluster):
    upstreams.failing.fail_next(10**6, status=500)

    answers = [ask(cluster) for _ in range(6)]

    assert all(complete(events) for events in answers)  # each failure was retried on a healthy deployment
    assert len(upstreams.failing.requests) == 3  # allowed_fails, counted across both instances
    assert served(upstreams.healthy) + served(upstreams.slow) == 6
    entered = cooldowns("cooldown_entered")
    assert [(e["deployment"], e["model"]) for e in entered] == [("failing", "fake-large")]  # once, cluster-wide

    upstreams.failing.configure(fail_next=0)  # healed: after the cooldown one probe finds it well
    until(lambda: complete(ask(cluster)) and served(upstreams.failing) > 0, "the healed deployment to serve again")
    assert [e["deployment"] for e in cooldowns("cooldown_left")] == ["failing"]
    before = served(upstreams.failing)
    assert complete(ask(cluster)) and served(upstreams.failing) == before + 1  # first in priority again


def test_a_429_retry_after_cools_the_deployment_down_for_that_long_at_once(upstreams, cluster):
    upstreams.failing.configure(fail_next=10**6, fail_status=429, retry_after=1)

    assert complete(ask(cluster))

    assert len(upstreams.failing.requests) == 1
    [entered] = cooldowns("cooldown_entered")
    assert entered["seconds"] == 1
    upstreams.failing.configure(fail_next=0)
    until(lambda: complete(ask(cluster)) and served(upstreams.failing) > 0, "the deployment after Retry-After")


def test_connection_refused_counts_as_a_failure_and_no_request_fails(upstreams, cluster):
    upstreams.failing.stop()  # nothing listens on its port any more

    answers = [ask(cluster) for _ in range(5)]

    assert all(complete(events) for events in answers)
    assert [e["deployment"] for e in cooldowns("cooldown_entered")] == ["failing"]


def test_a_stream_cut_after_its_first_token_ends_with_an_error_and_is_billed_for_what_came(upstreams, cluster):
    upstreams.failing.configure(drop_after=2, tokens=10)

    events = ask(cluster)

    assert [e["type"] for e in events].count("token") == 2
    assert events[-1]["status"] == "error"
    assert served(upstreams.healthy) + served(upstreams.slow) == 0  # never switched mid-answer
    record = UsageRecord.objects.get()
    assert (record.output_tokens, record.status) == (2, "error")


def test_a_model_with_no_deployment_left_falls_back_across_the_cluster(upstreams, cluster):
    upstreams.failing.fail_next(10**6, status=502)

    answers = [ask(cluster, model="fake-solo") for _ in range(4)]

    assert all(complete(events) for events in answers)
    assert {next(e for e in events if e["type"] == "usage")["model"] for events in answers} == {"fake-backup"}
    assert set(UsageRecord.objects.values_list("model", flat=True)) == {"fake-backup"}
    assert AuditEvent.objects.filter(action="model.fallback").count() == 4
    # Two attempts a request (num_retries=1) until the third failure cools the deployment down;
    # from then on straight to the fallback.
    assert len(upstreams.failing.requests) == 3
