"""Fixtures for tests that talk to a live Relay: keys, an upstream model on the fake server."""

from decimal import Decimal

import pytest

from accounts.actions.keys import create_api_key
from relay.testing.fake_upstream import FakeUpstream, FakeUpstreamConfig


@pytest.fixture
def fake_upstream():
    with FakeUpstream(FakeUpstreamConfig()) as server:
        yield server


@pytest.fixture
def upstream_model(fake_upstream, transactional_db):
    """A model endpoint named "fake-large" served by the fake upstream, with a price."""
    from agents.models import ModelEndpoint
    from billing.models import ModelPrice

    ModelEndpoint.objects.create(name="fake-large", base_url=fake_upstream.base_url, upstream_model="fake-large")
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    return "fake-large"


@pytest.fixture
def user_key(users):
    return create_api_key(users["user"], "streaming").secret


def parse_sse(lines) -> list[dict]:
    import json

    return [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
