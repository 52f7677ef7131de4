"""What a model call's path waits for, kept short without giving anything up.

- The run's reads (agent, model, price and budgets) are done on the DB thread that admitted the
  request, in the same trip (relay.api.async_views' prelude, agents.runner.read_ahead; on a
  WebSocket, the trip that admits each query), and the
  price copies' version token comes in the same cache round trip as the API key
  (relay.versioned_cache.one_read / get_along).
- A token read along never outlives its block, and a change made inside the block is not
  read past: a new hard budget binds the next request as before.
- The routing release beside the settle: tests/router/test_release_on_serving_loop.py.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
import websockets
from django.core.cache import cache

from accounts.actions.keys import create_api_key
from agents import runner
from agents.actions.endpoints import create_endpoint
from billing import rule_cache
from billing.models import Budget, ModelPrice
from relay import versioned_cache
from tests.reconciled import assert_reconciled

BODIES = {
    "/v1/chat/completions": {"model": "fake-large", "messages": [{"role": "user", "content": "Say hello."}],
                             "temperature": 0.7},
    "/api/v1/stream": {"query": "Say hello.", "agent_type": "general", "model": "fake-large", "cache": False},
}


@pytest.fixture
def secret(users, fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    issued = create_api_key(users["user"], "trips")
    Budget.objects.create(organization=users["user"].organization, scope="api_key", api_key=issued.key,
                          period="monthly", limit_usd=Decimal("10"), hard=True, alert_thresholds=[])
    return issued.secret


def _over_http(server, secret, path):
    response = httpx.post(server.url + path, json=BODIES[path], headers={"Authorization": f"Bearer {secret}"},
                          timeout=30)
    assert response.status_code == 200, response.text


def _over_websocket(server, secret):
    async def scenario():
        async with websockets.connect(server.url.replace("http://", "ws://") + "/ws/chat/") as ws:
            await ws.send(json.dumps({"type": "auth", "token": secret}))
            assert json.loads(await ws.recv())["type"] == "authenticated"
            await ws.send(json.dumps({"type": "query", **BODIES["/api/v1/stream"]}))
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 20)))["type"] != "done":
                pass
            assert event["status"] == "complete", event

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [*BODIES, "/ws/chat/"])
def test_a_runs_reads_share_the_trip_that_admits_it(asgi_server, secret, monkeypatch, path):
    reads, views = [], []
    prepare_reads, view = runner._prepare_reads, rule_cache.RULES.view

    def spied_reads(req, now):
        reads.append(versioned_cache._read_along.get() is not None)  # inside the admission's block
        return prepare_reads(req, now)

    def spied_view():
        views.append(dict(versioned_cache._read_along.get() or {}))
        return view()

    monkeypatch.setattr(runner, "_prepare_reads", spied_reads)
    monkeypatch.setattr(rule_cache.RULES, "view", spied_view)

    if path == "/ws/chat/":
        _over_websocket(asgi_server, secret)
    else:
        _over_http(asgi_server, secret, path)

    assert reads == [True]
    assert views and rule_cache.RULES.name in views[0]  # the price token came with the API key
    assert_reconciled()


@pytest.mark.django_db(transaction=True)
def test_a_refusal_in_the_admitting_trip_names_its_caller(asgi_server, secret):
    body = {**BODIES["/v1/chat/completions"], "model": "no-such-model"}
    response = httpx.post(asgi_server.url + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {secret}"}, timeout=30)

    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.fixture
def along():
    """A copy registered for the test only (every get_along reads the registered copies' tokens)."""
    copies = versioned_cache.VersionedCache(f"test-along-{id(object())}")
    copies.view()  # its token exists, as every copy's does once it has been read
    yield copies
    versioned_cache._registered.remove(copies)
    cache.delete(copies._version_key)


def test_a_token_read_along_serves_its_block_only(along):
    cache.set("test-along-key", "value")
    with versioned_cache.one_read():
        versioned_cache.get_along("test-along-key")  # a request that reads no prices (GET /v1/models, say)
    cache.set(along._version_key, "replaced")  # another instance changed the rows since
    assert along.view().version == "replaced"  # the token left with its block
    with versioned_cache.one_read():
        assert versioned_cache.get_along("test-along-key") == "value"
        cache.set(along._version_key, "replaced again")  # a change a moment after the read
        assert along.view().version == "replaced"  # read with the key, at the start of the request
    assert along.view().version == "replaced again"  # the next request reads again


def test_a_change_inside_the_block_is_not_read_past(along, django_db_blocker):
    with django_db_blocker.unblock(), versioned_cache.one_read():
        versioned_cache.get_along("test-along-key")
        along.bump()  # e.g. a budget created by this very request
        assert along.view().version == cache.get(along._version_key)
