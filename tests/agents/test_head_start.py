"""The model is asked while the run's opening commits, and nothing reaches the caller before it has.

Control: agents.runner._prepare starts the model's answer (relay.eventloop.head_start.HeadStart)
before it awaits runs.open_run, and abandons it when the opening fails: the upstream call
stopped, its deployment released, the reservation given back, nothing stored or streamed.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from django.db import OperationalError

from accounts.actions.keys import create_api_key
from agents import router
from agents.actions import runs
from agents.actions.endpoints import create_endpoint
from agents.models import Message
from agents.providers.catalog import resolve
from billing.models import Budget, ModelPrice, UsageRecord
from tests.reconciled import assert_reconciled
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def secret(users, fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    issued = create_api_key(users["user"], "head start")
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=issued.key,
                          period="monthly", limit_usd=Decimal("10"), hard=True, alert_thresholds=[])
    return issued.secret


def opening_waits_for_the_upstream(monkeypatch, upstream, then) -> list[bool]:
    """Hold the opening's transaction until the upstream has been asked (or 10 s), then `then(write)`.

    Returns whether the upstream had been asked, once per opening."""
    asked = []

    def write_one(write):
        asked.append(upstream.wait_for_requests(1, timeout=10))
        return then(write)

    monkeypatch.setattr(runs._OPENINGS, "write_one", write_one)
    return asked


def post_stream(server, secret):
    body = {"query": "Say hello.", "agent_type": "general", "model": "fake-large", "cache": False}
    return httpx.post(f"{server.url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)


def test_the_upstream_is_asked_before_the_opening_commits_and_the_answer_is_stored(
        asgi_server, secret, fake_upstream, monkeypatch):
    asked = opening_waits_for_the_upstream(monkeypatch, fake_upstream, runs._OPENINGS.write_one)

    response = post_stream(asgi_server, secret)

    assert response.status_code == 200 and asked == [True]
    events = parse_sse(response.iter_lines())
    assert [e["type"] for e in events][0] == "start" and events[-1]["status"] == "complete"
    assert "".join(e["content"] for e in events if e["type"] == "token") == "Echo: Say hello."
    answer = Message.objects.get(role="assistant")
    assert (answer.content, answer.status) == ("Echo: Say hello.", "complete")
    assert UsageRecord.objects.get().status == "complete"
    assert_reconciled()


def test_an_opening_the_database_refuses_stops_the_model_call_before_any_byte(
        asgi_server, secret, fake_upstream, monkeypatch):
    fake_upstream.configure(tps=5, tokens=50)  # still streaming when the opening fails

    def refuse(write):
        raise OperationalError("the database went away")

    asked = opening_waits_for_the_upstream(monkeypatch, fake_upstream, refuse)

    response = post_stream(asgi_server, secret)

    assert asked == [True]
    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert fake_upstream.wait_for_disconnect(timeout=10) is not None  # the call was stopped, not read on
    assert [row["in_flight"] for row in router.snapshot(resolve("fake-large"))] == [0]
    assert not Message.objects.exists() and not UsageRecord.objects.exists()
    assert_reconciled()  # no reservation left in the ledger
