"""Retries across a model's deployments and fallbacks to other models, as a client sees them.

One live Relay (the asgi_server fixture) in front of fake upstreams; the cluster-wide health of
deployments is tested in tests/agents/test_routing_live.py and the router's state on its own in
tests/router/.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from agents.models import Message
from audit.models import AuditEvent
from billing.models import Budget, ModelPrice, UsageRecord
from tests.reconciled import assert_reconciled
from tests.support.fake_upstream import FakeUpstream
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
PRICES = {"fake-large": ("0.001", "0.002"), "fake-backup": ("0.004", "0.008"), "fake-huge": ("0.1", "0.2")}


@pytest.fixture
def second_upstream():
    with FakeUpstream() as server:
        yield server


def price(*names):
    for name in names:
        low, high = PRICES[name]
        ModelPrice.objects.create(model=name, input_per_1k=Decimal(low), output_per_1k=Decimal(high))


def deployment(name, upstream, **fields):
    return {"name": name, "base_url": upstream.base_url, "upstream_model": "fake-large", **fields}


def budgeted_key(user, limit_usd="10", **limits):
    issued = create_api_key(user, "fallbacks", **limits)
    Budget.objects.create(organization=user.organization, scope="api_key", api_key=issued.key, period="monthly",
                          limit_usd=Decimal(limit_usd), hard=True, alert_thresholds=[])
    return issued.secret


def stream(server, secret, model, query="Tell me something.", **extra) -> list[dict]:
    body = {"query": query, "agent_type": "general", "model": model, "cache": False, **extra}
    with httpx.Client(base_url=server.url, timeout=30) as client, client.stream(
            "POST", "/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.status_code == 200, response.read()
        return parse_sse(response.iter_lines())


def answered(events) -> tuple[str, str]:
    text = "".join(e["content"] for e in events if e["type"] == "token")
    return text, events[-1]["status"]


def test_a_failure_before_the_first_token_is_answered_by_another_deployment(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.fail_next(10, status=500)
    create_endpoint("fake-large", routing_strategy="priority", num_retries=2, deployments=[
        deployment("first", fake_upstream, priority=0), deployment("second", second_upstream, priority=1)])
    price("fake-large")
    secret = budgeted_key(users["user"])

    events = stream(asgi_server, secret, "fake-large", "Say hello.")

    assert answered(events) == ("Echo: Say hello.", "complete")
    assert [e for e in events if e["type"] == "error"] == []
    assert len(fake_upstream.requests) == 1 and len(second_upstream.requests) == 1
    record = UsageRecord.objects.get()
    assert (record.model, record.status) == ("fake-large", "complete")
    assert_reconciled()


def test_after_the_first_token_a_stream_is_never_switched(asgi_server, users, fake_upstream, second_upstream):
    # Tokens 50 ms apart: aiohttp drops what it buffered when the connection is cut, so the
    # second token must be read before the cut for the count below to be exact.
    fake_upstream.configure(drop_after=2, tokens=10, tps=20)
    create_endpoint("fake-large", routing_strategy="priority", deployments=[
        deployment("first", fake_upstream, priority=0), deployment("second", second_upstream, priority=1)])
    price("fake-large")
    secret = budgeted_key(users["user"])

    events = stream(asgi_server, secret, "fake-large")

    kinds = [e["type"] for e in events]
    assert kinds.count("token") == 2 and "error" in kinds and events[-1]["status"] == "error"
    assert second_upstream.requests == []  # the answer had begun: not asked again elsewhere
    record = UsageRecord.objects.get()
    assert record.output_tokens == 2  # billed for what was produced
    assert_reconciled()


def test_when_every_deployment_fails_the_fallback_model_answers_at_its_own_price(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.fail_next(10, status=503)
    create_endpoint("fake-backup", deployments=[deployment("backup", second_upstream)])
    create_endpoint("fake-large", fallbacks=["fake-backup"], num_retries=1,
                    deployments=[deployment("only", fake_upstream)])
    price("fake-large", "fake-backup")
    secret = budgeted_key(users["user"])

    events = stream(asgi_server, secret, "fake-large", "Say hello.")

    assert answered(events) == ("Echo: Say hello.", "complete")
    start, usage = events[0], next(e for e in events if e["type"] == "usage")
    assert start["model"] == "fake-large" and usage["model"] == "fake-backup"
    record = UsageRecord.objects.get()
    assert record.model == "fake-backup"
    in_price, out_price = (Decimal(p) / 1000 for p in PRICES["fake-backup"])
    assert record.cost == record.input_tokens * in_price + record.output_tokens * out_price
    assert Message.objects.get(role="assistant").model == "fake-backup"
    fallback = AuditEvent.objects.get(action="model.fallback")
    assert fallback.metadata.items() >= {"from": "fake-large", "to": "fake-backup", "reason": "unavailable"}.items()
    assert len(fake_upstream.requests) == 2  # num_retries=1: two attempts on its one deployment
    assert_reconciled()


def test_a_key_limited_to_one_model_never_falls_back_to_another(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.fail_next(10, status=500)
    create_endpoint("fake-backup", deployments=[deployment("backup", second_upstream)])
    create_endpoint("fake-large", fallbacks=["fake-backup"], num_retries=0,
                    deployments=[deployment("only", fake_upstream)])
    price("fake-large", "fake-backup")
    secret = budgeted_key(users["user"], allowed_models=["fake-large"])

    events = stream(asgi_server, secret, "fake-large")

    assert events[-1]["status"] == "error"
    assert second_upstream.requests == []
    assert not AuditEvent.objects.filter(action="model.fallback").exists()
    assert_reconciled()


def test_a_fallback_the_budget_cannot_cover_ends_the_run_with_nothing_billed(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.fail_next(10, status=500)
    create_endpoint("fake-huge", deployments=[deployment("huge", second_upstream)])
    create_endpoint("fake-large", fallbacks=["fake-huge"], num_retries=0,
                    deployments=[deployment("only", fake_upstream)])
    price("fake-large", "fake-huge")
    # Enough for the asked model's worst case, far from enough for the fallback's.
    secret = budgeted_key(users["user"], limit_usd="0.001")

    events = stream(asgi_server, secret, "fake-large", max_tokens=50)

    assert events[-1]["status"] == "budget_stop"
    assert next(e for e in events if e["type"] == "error")["code"] == "budget_exceeded"
    assert second_upstream.requests == []
    record = UsageRecord.objects.get()
    assert record.cost == 0
    assert_reconciled()


def test_a_context_window_refusal_moves_to_the_context_window_fallback(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.configure(fail_next=1, fail_status=400,
                            fail_message="This model's maximum context length is 8 tokens.")
    create_endpoint("fake-backup", deployments=[deployment("long", second_upstream)])
    create_endpoint("fake-large", context_window_fallback="fake-backup", deployments=[
        deployment("short", fake_upstream)])
    price("fake-large", "fake-backup")
    secret = budgeted_key(users["user"])

    events = stream(asgi_server, secret, "fake-large", "A long question.")

    assert answered(events) == ("Echo: A long question.", "complete")
    assert next(e for e in events if e["type"] == "usage")["model"] == "fake-backup"
    assert len(fake_upstream.requests) == 1  # the request's fault: not retried on the same model
    assert AuditEvent.objects.get(action="model.fallback").metadata["reason"] == "context_window"


def test_a_slow_first_token_is_a_timeout_and_another_deployment_answers(
        asgi_server, users, fake_upstream, second_upstream):
    fake_upstream.configure(ttft=30)
    create_endpoint("fake-large", routing_strategy="priority", first_token_timeout_seconds=0.3, deployments=[
        deployment("stuck", fake_upstream, priority=0), deployment("quick", second_upstream, priority=1)])
    price("fake-large")
    secret = budgeted_key(users["user"])

    events = stream(asgi_server, secret, "fake-large", "Say hello.")

    assert answered(events) == ("Echo: Say hello.", "complete")
    assert fake_upstream.wait_for_disconnect(timeout=10) is not None  # the stuck call was hung up
