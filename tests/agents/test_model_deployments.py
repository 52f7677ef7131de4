"""Models served by deployments: the catalog, the actions' rules and the platform API (issue 18).

Controls: agents.providers.catalog (_endpoint_models, _env_models, forget_catalog on deployment
saves), agents.models (validators, ModelEndpoint.clean), agents.actions.endpoints, and
agents/api/platform_views.py with accounts.scoping.Rule(platform=True) + PLATFORM_STAFF.
"""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.actions.keys import create_api_key
from accounts.models import User
from agents.actions.endpoints import create_endpoint, delete_deployment, save_deployment
from agents.models import ModelDeployment, ModelEndpoint
from agents.providers import catalog
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db
URL = "http://10.0.0.5:8000/v1"


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def two_gpus(name="llama", **fields) -> ModelEndpoint:
    return create_endpoint(name, deployments=[
        {"name": "gpu-b", "base_url": "http://b:8000/v1", "priority": 1, "weight": 3, "rpm_limit": 60},
        {"name": "gpu-a", "base_url": "http://a:8000/v1", "upstream_model": "meta/llama", "api_key_env": "RELAY_UPSTREAM_KEY_A"},
    ], **fields)


# --- The catalog ---------------------------------------------------------------------------------

def test_a_model_is_offered_with_its_enabled_deployments_and_policy(monkeypatch):
    monkeypatch.setenv("RELAY_UPSTREAM_KEY_A", "sk-a")
    endpoint = two_gpus(routing_strategy="priority", allowed_fails=5, cooldown_seconds=10, num_retries=1,
                        first_token_timeout_seconds=2.5, fallbacks=["local-mini"], context_window_fallback="local-large")
    choice = catalog.resolve("llama")
    assert choice.kind == "openai" and not choice.is_local
    assert choice.policy == catalog.RoutingPolicy(strategy="priority", allowed_fails=5, failure_window=60.0,
                                                  cooldown=10.0, num_retries=1, first_token_timeout=2.5)
    assert (choice.fallbacks, choice.context_window_fallback) == (("local-mini",), "local-large")
    a, b = endpoint.deployments.order_by("name")
    assert choice.deployments == (  # lower priority first
        catalog.DeploymentChoice(key=str(a.pk), name="gpu-a", base_url="http://a:8000/v1", upstream_model="meta/llama",
                                 api_key="sk-a"),
        catalog.DeploymentChoice(key=str(b.pk), name="gpu-b", base_url="http://b:8000/v1", upstream_model="llama",
                                 weight=3, priority=1, rpm_limit=60))


def test_a_model_without_an_enabled_deployment_is_not_served(users, client_for):
    endpoint = two_gpus()
    client = client_for(users["user"])
    assert "llama" in {m["id"] for m in client.get("/v1/models").json()["data"]}
    for deployment in endpoint.deployments.all():
        deployment.enabled = False
        save_deployment(deployment)  # each save drops the catalog: no wait for its TTL
        served = catalog.resolve("llama")
        assert served is None or [d.name for d in served.deployments] == ["gpu-b"]
    assert catalog.resolve("llama") is None
    assert "llama" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert not ModelEndpoint.objects.served().filter(pk=endpoint.pk).exists()


def test_env_models_are_one_deployment_models_keyed_by_name(settings):
    settings.RELAY_LLM_BASE_URL, settings.RELAY_LLM_MODELS, settings.RELAY_LLM_API_KEY = URL, ["m1", "m2"], "sk"
    catalog.forget_catalog()
    m1 = catalog.resolve("m1")
    assert m1.deployments == (catalog.DeploymentChoice(key="env:m1", name="env", base_url=URL, upstream_model="m1",
                                                       api_key="sk"),)
    assert catalog.resolve("m2").deployments[0].key == "env:m2"


def test_a_deployment_provider_makes_one_attempt_and_is_shared():
    first = catalog.DeploymentChoice(key="1", name="a", base_url="http://pool-test:1/v1", upstream_model="x")
    again = catalog.DeploymentChoice(key="2", name="b", base_url="http://pool-test:1/v1", upstream_model="y")
    assert first.provider() is again.provider() and first.provider().max_retries == 0


# --- The actions -------------------------------------------------------------------------------

def test_create_endpoint_is_one_event_with_its_deployments():
    endpoint = two_gpus()
    [event] = events(actions.MODEL_ENDPOINT_CREATED)
    assert event.resource == f"model_endpoint:{endpoint.pk}"
    assert [(d["name"], d["weight"], d["api_key_env"]) for d in event.metadata["deployments"]] == [
        ("gpu-b", 3, ""), ("gpu-a", 1, "RELAY_UPSTREAM_KEY_A")]
    assert events(actions.MODEL_DEPLOYMENT_CREATED) == []


@pytest.mark.parametrize(("fields", "deployments", "field", "message"), [
    ({}, [{"name": "a", "base_url": URL}, {"name": "a", "base_url": URL}], "deployments", "its own name"),
    ({}, [{"name": "a", "base_url": URL, "weight": 0}], "deployments", "a: weight"),
    ({}, [{"name": "a", "base_url": "file:///etc/passwd"}], "deployments", "http:// or https://"),
    ({}, [{"name": "a", "base_url": "http://user:pw@host/v1"}], "deployments", "No credentials"),
    ({}, [{"name": "not a slug", "base_url": URL}], "deployments", "name"),
    ({}, [{"name": "a", "base_url": URL, "api_key_env": "$(rm)"}], "deployments", "api_key_env"),
    ({}, [{"name": f"d{n}", "base_url": URL} for n in range(51)], "deployments", "At most 50"),
    ({"fallbacks": ["m"]}, [], "fallbacks", "itself"),
    ({"fallbacks": ["nowhere"]}, [], "fallbacks", "'nowhere' is not a served model"),
    ({"fallbacks": ["local-mini", "local-mini"]}, [], "fallbacks", "more than once"),
    ({"fallbacks": "local-mini"}, [], "fallbacks", "A list of model names"),
    ({"context_window_fallback": "m"}, [], "context_window_fallback", "itself"),
    ({"allowed_fails": 0}, [], "allowed_fails", "greater than or equal to 1"),
    ({"first_token_timeout_seconds": 0}, [], "first_token_timeout_seconds", "greater than or equal to 0.1"),
    ({"routing_strategy": "fastest"}, [], "routing_strategy", "not a valid choice"),
])
def test_create_endpoint_refuses_bad_values_and_writes_nothing(fields, deployments, field, message):
    with pytest.raises(ValidationError) as refused:
        create_endpoint("m", deployments=deployments, **fields)
    assert message in " ".join(refused.value.message_dict[field])
    assert not ModelEndpoint.objects.exists() and not ModelDeployment.objects.exists()
    assert events(actions.MODEL_ENDPOINT_CREATED) == []


def test_more_than_five_fallbacks_are_refused():
    for n in range(6):
        create_endpoint(f"f{n}", deployments=[])
    with pytest.raises(ValidationError, match="At most 5"):
        create_endpoint("m", deployments=[], fallbacks=[f"f{n}" for n in range(6)])
    create_endpoint("m", deployments=[], fallbacks=[f"f{n}" for n in range(5)])


def test_deployment_writes_are_one_event_each_and_names_stay_unique():
    endpoint = two_gpus()
    with pytest.raises(ValidationError, match="already exists"):
        save_deployment(ModelDeployment(endpoint=endpoint, name="gpu-a", base_url=URL))
    third = save_deployment(ModelDeployment(endpoint=endpoint, name="gpu-c", base_url=URL))
    third.weight = 7
    save_deployment(third)
    pk = third.pk
    delete_deployment(third)
    created, updated, deleted = (events(a) for a in (actions.MODEL_DEPLOYMENT_CREATED,
                                                     actions.MODEL_DEPLOYMENT_UPDATED,
                                                     actions.MODEL_DEPLOYMENT_DELETED))
    assert [e.metadata["name"] for e in created] == ["gpu-c"] and created[0].metadata["model"] == "llama"
    assert [e.metadata["changes"] for e in updated] == [{"weight": [1, 7]}]
    assert [e.resource for e in deleted] == [f"model_deployment:{pk}"]


# --- The platform API --------------------------------------------------------------------------

@pytest.fixture
def operator(db):
    return User.objects.create_superuser("operator", "op@example.com", "correct horse battery staple")


@pytest.fixture
def platform(client_for, operator):
    return client_for(operator)


def test_platform_staff_manage_models_and_deployments(platform, operator):
    created = platform.post(reverse("platform-model-list"), {
        "name": "qwen", "routing_strategy": "weighted_random", "fallbacks": ["local-large"],
        "deployments": [{"name": "east", "base_url": "http://east:8000/v1", "weight": 3},
                        {"name": "west", "base_url": "http://west:8000/v1", "tpm_limit": 100000}]}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert [(d["name"], d["weight"], d["tpm_limit"]) for d in body["deployments"]] == [
        ("east", 3, None), ("west", 1, 100000)]
    assert [d.name for d in catalog.resolve("qwen").deployments] == ["east", "west"]
    model = body["id"]

    changed = platform.patch(reverse("platform-model-detail", args=[model]), {"num_retries": 0}, format="json")
    assert changed.status_code == 200 and changed.json()["num_retries"] == 0

    added = platform.post(reverse("platform-deployment-list"), {"model": model, "name": "north",
                                                                "base_url": "http://north:8000/v1"}, format="json")
    assert added.status_code == 201 and added.json()["model_name"] == "qwen"
    north = added.json()["id"]
    listed = platform.get(reverse("platform-deployment-list"), {"model": model}).json()["results"]
    assert sorted(d["name"] for d in listed) == ["east", "north", "west"]
    off = platform.patch(reverse("platform-deployment-detail", args=[north]), {"enabled": False}, format="json")
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert platform.delete(reverse("platform-deployment-detail", args=[north])).status_code == 204
    assert platform.delete(reverse("platform-model-detail", args=[model])).status_code == 204
    assert not ModelDeployment.objects.exists()
    recorded = AuditEvent.objects.filter(actor=operator).exclude(action=actions.LOGIN_SUCCEEDED)
    assert list(recorded.order_by("sequence").values_list("action", flat=True)) == [
        actions.MODEL_ENDPOINT_CREATED, actions.MODEL_ENDPOINT_UPDATED, actions.MODEL_DEPLOYMENT_CREATED,
        actions.MODEL_DEPLOYMENT_UPDATED, actions.MODEL_DEPLOYMENT_DELETED, actions.MODEL_ENDPOINT_DELETED]


def test_staff_outside_every_organization_and_full_keys_are_platform_staff(client_for, operator, api_client):
    staff = User.objects.create_user("ops", password="correct horse battery staple", is_staff=True)
    assert client_for(staff).get(reverse("platform-model-list")).status_code == 200
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(operator, 'ops').secret}")
    assert api_client.get(reverse("platform-model-list")).status_code == 200
    narrow = create_api_key(operator, "narrow", scopes=["view_metrics"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow}")
    assert_envelope(api_client.get(reverse("platform-model-list")), 403, "permission_denied")


def test_organization_roles_never_reach_the_platform_api(users, client_for):
    endpoint = two_gpus()
    deployment = endpoint.deployments.first()
    for user in users.values():
        client = client_for(user)
        for path in (reverse("platform-model-list"), reverse("platform-model-detail", args=[endpoint.pk]),
                     reverse("platform-deployment-detail", args=[deployment.pk])):
            assert_envelope(client.get(path), 403, "permission_denied")
        assert_envelope(client.delete(reverse("platform-model-detail", args=[endpoint.pk])), 403)
    assert ModelDeployment.objects.count() == 2


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 123}, "name"),
    ({"name": "m", "unknown": 1}, "unknown"),
    ({"name": "m", "deployments": "gpu"}, "deployments"),
    ({"name": "m", "deployments": [{"name": "a"}]}, "deployments"),
    ({"name": "m", "deployments": [{"name": 5, "base_url": URL}]}, "deployments"),
    ({"name": "m", "deployments": [{"name": "a", "base_url": URL}, {"name": "a", "base_url": URL}]}, "deployments"),
    ({"name": "m", "deployments": [{"name": "a", "base_url": URL, "weight": 10**20}]}, "deployments"),
    ({"name": "m", "deployments": [{"name": "a", "base_url": URL, "rpm_limit": 10**12}]}, "deployments"),
    ({"name": "m", "deployments": [{"name": "a", "base_url": "ftp://x/v1"}]}, "deployments"),
    ({"name": "m", "fallbacks": "local-mini"}, "fallbacks"),
    ({"name": "m", "fallbacks": [1]}, "fallbacks"),
    ({"name": "m", "fallbacks": ["nowhere"]}, "fallbacks"),
    ({"name": "m", "fallbacks": ["m"]}, "fallbacks"),
    ({"name": "m", "fallbacks": ["local-mini"] * 6}, "fallbacks"),
    ({"name": "m", "context_window_fallback": "nowhere"}, "context_window_fallback"),
    ({"name": "m", "num_retries": -1}, "num_retries"),
    ({"name": "m", "num_retries": 10**30}, "num_retries"),
    ({"name": "m", "first_token_timeout_seconds": "soon"}, "first_token_timeout_seconds"),
    ({"name": "m", "first_token_timeout_seconds": 1e308}, "first_token_timeout_seconds"),
    ({"name": "m", "routing_strategy": "fastest"}, "routing_strategy"),
    ({"name": "x" * 101}, "name"),
])
def test_bad_models_are_refused_with_the_envelope(platform, body, field):
    error = assert_envelope(platform.post(reverse("platform-model-list"), body, format="json"), 400, "invalid")
    assert field in error["fields"], error
    assert not ModelEndpoint.objects.exists() and events(actions.MODEL_ENDPOINT_CREATED) == []


def test_bad_deployments_and_edits_are_refused_with_the_envelope(platform):
    llama, other = two_gpus(), create_endpoint("other", deployments=[])
    gpu = llama.deployments.get(name="gpu-a")
    deployments, detail = reverse("platform-deployment-list"), reverse("platform-deployment-detail", args=[gpu.pk])
    for body, field in (({"model": llama.pk, "name": "gpu-a", "base_url": URL}, "name"),
                        ({"model": 10**30, "name": "z", "base_url": URL}, "model"),
                        ({"model": "llama", "name": "z", "base_url": URL}, "model"),
                        ({"model": llama.pk, "name": "z", "base_url": URL, "priority": 10**6}, "priority")):
        error = assert_envelope(platform.post(deployments, body, format="json"), 400, "invalid")
        assert field in error["fields"], (body, error)
    for body, field in (({"model": other.pk}, "model"), ({"name": "gpu-b"}, "name"), ({"weight": 0}, "weight"),
                        ({"enabled": "maybe"}, "enabled"), ({"id": 5}, "id")):
        error = assert_envelope(platform.patch(detail, body, format="json"), 400, "invalid")
        assert field in error["fields"], (body, error)
    model_detail = reverse("platform-model-detail", args=[llama.pk])
    error = assert_envelope(platform.patch(model_detail, {"deployments": []}, format="json"), 400, "invalid")
    assert "deployments" in error["fields"]
    error = assert_envelope(platform.patch(model_detail, {"name": "other"}, format="json"), 400, "invalid")
    assert "name" in error["fields"]
    assert_envelope(platform.get(reverse("platform-model-detail", args=[10**30])), 404, "not_found")
    assert_envelope(platform.put(model_detail, {"name": "x"}, format="json"), 405)
    assert platform.get(deployments, {"model": "x"}).json()["results"] == []
    assert events(actions.MODEL_DEPLOYMENT_CREATED) == events(actions.MODEL_DEPLOYMENT_UPDATED) == []


# --- The admin ---------------------------------------------------------------------------------

def test_the_admin_warns_about_a_model_nobody_serves(client, operator):
    endpoint = two_gpus()
    page = reverse("admin:agents_modelendpoint_change", args=[endpoint.pk])
    client.force_login(operator)

    def warnings() -> str:
        return " ".join(str(m) for m in client.get(page).context["messages"] if m.level_tag == "warning")

    assert "no enabled deployment" not in warnings()
    endpoint.deployments.update(enabled=False)
    assert "no enabled deployment" in warnings()
    listing = client.get(reverse("admin:agents_modeldeployment_changelist"), {"q": "gpu"})
    assert [str(row) for row in listing.context["cl"].result_list] == ["llama/gpu-a", "llama/gpu-b"]
