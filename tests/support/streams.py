"""Reading streams in tests, and the streaming fixtures (a plugin: tests/conftest.py registers it).

Relay's own stream (/api/v1/stream) and the OpenAI-compatible one (/v1/chat/completions) are both
Server-Sent Events: one `data: <json>` line per event, the OpenAI one ending with `data: [DONE]`.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.support.fake_upstream import FakeUpstream, FakeUpstreamConfig

DONE = "data: [DONE]"


def sse_events(lines):
    """The events of SSE `lines` as they arrive (stop reading whenever you like); [DONE] is skipped."""
    for line in lines:
        if line.startswith("data: ") and line != DONE:
            yield json.loads(line[len("data: "):])


def parse_sse(lines) -> list[dict]:
    """Every event of SSE `lines` (the whole stream read first)."""
    return list(sse_events(lines))


@pytest.fixture
def fake_upstream():
    """A fake OpenAI-compatible upstream (tests/support/fake_upstream.py) on a free port."""
    with FakeUpstream(FakeUpstreamConfig()) as server:
        yield server


@pytest.fixture(scope="module")
def module_upstream():
    """One fake upstream for a whole test module (starting one per test is slow); see `fresh_upstream`."""
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def fresh_upstream(module_upstream):
    """The module's fake upstream, reset (scripted replies, recorded requests) for this test."""
    module_upstream.reset()
    return module_upstream


@pytest.fixture
def upstream_model(fake_upstream, transactional_db):
    """A model endpoint named "fake-large" served by the fake upstream, with a price."""
    from agents.actions.endpoints import create_endpoint
    from billing.models import ModelPrice

    create_endpoint("fake-large", deployments=[{"name": "primary", "base_url": fake_upstream.base_url,
                                             "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    return "fake-large"


@pytest.fixture
def user_key(users):
    """The API key secret of the `users` fixture's plain user."""
    from accounts.actions.keys import create_api_key

    return create_api_key(users["user"], "streaming").secret
