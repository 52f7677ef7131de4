"""The model is asked only after the run's opening has committed.

Control: agents.runner._prepare awaits runs.open_run before it returns, and the model's answer
(agents.fallbacks.answer) is begun only by the stream that follows. A model call begun while the
opening commits would reach the upstream even when the database refuses the opening: a paid
call with no row for `reconcile` to find (70ff43c did this, and was withdrawn).
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from django.db import OperationalError

from accounts.actions.keys import create_api_key
from agents import fallbacks
from agents.actions import runs
from agents.actions.endpoints import create_endpoint
from agents.models import Message
from billing.models import Budget, ModelPrice, UsageRecord
from tests.reconciled import assert_reconciled
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def secret(users, fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    issued = create_api_key(users["user"], "opening first")
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=issued.key,
                          period="monthly", limit_usd=Decimal("10"), hard=True, alert_thresholds=[])
    return issued.secret


@pytest.fixture
def steps(monkeypatch):
    """The order of the opening's write and the start of the model's answer, as they happen."""
    seen: list[str] = []
    write_one, answer = runs._OPENINGS.write_one, fallbacks.answer

    def opening(write):
        seen.append("opening")
        return write_one(write)

    def asking(*args, **kwargs):
        seen.append("model asked")
        return answer(*args, **kwargs)

    monkeypatch.setattr(runs._OPENINGS, "write_one", opening)
    monkeypatch.setattr(fallbacks, "answer", asking)
    return seen


def post_stream(server, secret):
    body = {"query": "Say hello.", "agent_type": "general", "model": "fake-large", "cache": False}
    return httpx.post(f"{server.url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30)


def test_the_model_is_asked_after_the_opening_commits(asgi_server, secret, fake_upstream, steps):
    response = post_stream(asgi_server, secret)

    assert response.status_code == 200
    assert parse_sse(response.iter_lines())[-1]["status"] == "complete"
    assert steps == ["opening", "model asked"]
    assert Message.objects.get(role="assistant").status == "complete"
    assert_reconciled()


def test_an_opening_the_database_refuses_asks_no_model(asgi_server, secret, fake_upstream, steps, monkeypatch):
    def refuse(write):
        steps.append("opening")
        raise OperationalError("the database went away")

    monkeypatch.setattr(runs._OPENINGS, "write_one", refuse)

    response = post_stream(asgi_server, secret)

    assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
    assert steps == ["opening"] and fake_upstream.requests == []
    assert not Message.objects.exists() and not UsageRecord.objects.exists()
    assert_reconciled()  # the reservation was given back
