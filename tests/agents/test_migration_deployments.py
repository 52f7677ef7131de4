"""agents 0006: today's endpoints become one-deployment models, with no change for clients.

Run on the test database with Django's MigrationExecutor: rows written at 0005 (one upstream per
endpoint), the migration applied, then the catalog, /v1/models and a priced request read them as
before; and back again (the migration is reversible).
"""

from decimal import Decimal

import httpx
import pytest

from tests.support.migrations import head, migrate

BEFORE = [("agents", "0005_idempotency_key")]
AFTER = [("agents", "0006_model_deployments")]


@pytest.fixture
def at_0005(transactional_db):
    apps = migrate(BEFORE)
    try:
        yield apps
    finally:
        migrate(head())  # the other tests need the head


def test_endpoints_become_one_deployment_models_and_clients_see_no_change(at_0005, asgi_server, fake_upstream,
                                                                            user_key, monkeypatch):
    from agents.models import ModelEndpoint
    from agents.providers.catalog import forget_catalog, resolve
    from billing.models import ModelPrice, UsageRecord
    from billing.money import cost_usd, nanos_per_token

    old = at_0005.get_model("agents", "ModelEndpoint")
    old.objects.create(name="alpha", base_url=fake_upstream.base_url, upstream_model="fake-alpha", tier="large")
    old.objects.create(name="beta", base_url="http://vllm:8000/v1", api_key_env="RELAY_UPSTREAM_KEY_BETA", supports_tools=False)
    old.objects.create(name="gamma", base_url="http://10.0.0.9:8000/v1", enabled=False)
    old.objects.create(name="delta", provider_kind="local")  # no upstream: nothing to carry over
    price = ModelPrice.objects.create(model="alpha", input_per_1k=Decimal("0.003"), output_per_1k=Decimal("0.011"))

    migrate(head())  # through 0006 and whatever came after it: the code below is today's
    forget_catalog()
    rows = {e.name: e for e in ModelEndpoint.objects.prefetch_related("deployments")}
    carried = {name: [(d.name, d.base_url, d.upstream_model, d.api_key_env, d.weight, d.enabled)
                      for d in rows[name].deployments.all()] for name in rows}
    assert carried == {"alpha": [("primary", fake_upstream.base_url, "fake-alpha", "", 1, True)],
                       "beta": [("primary", "http://vllm:8000/v1", "", "RELAY_UPSTREAM_KEY_BETA", 1, True)],
                       "gamma": [("primary", "http://10.0.0.9:8000/v1", "", "", 1, True)],
                       "delta": []}
    assert (rows["alpha"].tier, rows["beta"].supports_tools, rows["gamma"].enabled) == ("large", False, False)
    assert rows["alpha"].routing_strategy == "least_busy" and rows["alpha"].fallbacks == []

    monkeypatch.setenv("RELAY_UPSTREAM_KEY_BETA", "sk-beta")
    beta = resolve("beta").deployments[0]
    assert (beta.upstream_model, beta.api_key) == ("beta", "sk-beta")  # blank upstream model: the model's name

    headers = {"Authorization": f"Bearer {user_key}"}
    with httpx.Client(base_url=asgi_server.url, headers=headers, timeout=30) as client:
        listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert {"alpha", "beta"} <= listed and not {"gamma", "delta"} & listed  # as before: enabled upstreams
        answer = client.post("/api/v1/query", json={"query": "hello", "agent_type": "general", "model": "alpha",
                                                    "cache": False})
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[-1].body["model"] == "fake-alpha"
    record = UsageRecord.objects.get(message_id=answer.json()["message_id"])
    assert (record.model, record.price_id) == ("alpha", price.pk)
    assert record.cost == cost_usd(record.input_tokens * nanos_per_token(price.input_per_1k)
                                   + record.output_tokens * nanos_per_token(price.output_per_1k)) > 0


def test_backwards_each_model_keeps_its_primary_upstream(at_0005):
    old = at_0005.get_model("agents", "ModelEndpoint")
    old.objects.create(name="alpha", base_url="http://a:1/v1", upstream_model="up-alpha", api_key_env="RELAY_UPSTREAM_KEY_A")
    new = migrate(AFTER)
    endpoint = new.get_model("agents", "ModelEndpoint").objects.get(name="alpha")
    new.get_model("agents", "ModelDeployment").objects.create(endpoint=endpoint, name="aaa-second",
                                                              base_url="http://b:1/v1", priority=0)

    back = migrate(BEFORE).get_model("agents", "ModelEndpoint").objects.get(name="alpha")
    assert (back.base_url, back.upstream_model, back.api_key_env) == ("http://a:1/v1", "up-alpha", "RELAY_UPSTREAM_KEY_A")
