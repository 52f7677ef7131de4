"""A deployment's upstream key comes only from an environment variable meant for it.

Whoever edits a deployment (platform staff, not only superusers) also chooses its base_url, so an
`api_key_env` naming any variable would send that variable, SECRET_KEY say, to a host of their
choosing as the Bearer token. Controls: `agents.models.ModelDeployment.clean_fields`
(`upstream_key_env_allowed`: RELAY_LLM_API_KEY, RELAY_UPSTREAM_KEY_*, RELAY_UPSTREAM_KEY_ENVS),
which every write runs through `full_clean`, and `agents.providers.catalog._upstream_key`, which
sends a row written past validation no key.
"""

import logging

import httpx
import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from accounts.models import User
from agents.actions.endpoints import create_endpoint
from agents.checks import KEY_ENV_REFUSED, refused_key_envs
from agents.models import ModelDeployment, ModelEndpoint
from agents.providers import catalog
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope

URL = "http://10.0.0.5:8000/v1"


@pytest.fixture
def staff(db):
    """Platform staff: staff outside every organization, not a superuser."""
    return User.objects.create_user("ops", "ops@example.com", "correct horse battery staple", is_staff=True)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "RELAY_API_KEY_HASH_SECRET", "RELAY_UPSTREAM_KEY_"])
def test_a_deployment_cannot_name_a_variable_not_meant_for_upstream_keys(client_for, staff, name):
    # Control: ModelDeployment.clean_fields (upstream_key_env_allowed), through save_deployment's full_clean.
    endpoint = create_endpoint("llama", deployments=[{"name": "gpu", "base_url": URL}])
    deployment = endpoint.deployments.get()
    platform = client_for(staff, via="jwt")
    detail = reverse("platform-deployment-detail", args=[deployment.pk])
    error = assert_envelope(platform.patch(detail, {"api_key_env": name, "base_url": "https://attacker.example/v1"},
                                           format="json"), 400, "invalid")
    assert "api_key_env" in error["fields"] and "RELAY_UPSTREAM_KEY_ENVS" in error["message"], error
    deployment.refresh_from_db()
    assert (deployment.api_key_env, deployment.base_url) == ("", URL)

    added = platform.post(reverse("platform-deployment-list"), {"model": endpoint.pk, "name": "new", "base_url": URL,
                                                                "api_key_env": name}, format="json")
    assert "api_key_env" in assert_envelope(added, 400, "invalid")["fields"]
    created = platform.post(reverse("platform-model-list"), {"name": "qwen", "deployments": [
        {"name": "a", "base_url": URL, "api_key_env": name}]}, format="json")
    assert "api_key_env" in " ".join(assert_envelope(created, 400, "invalid")["fields"]["deployments"])
    assert list(ModelDeployment.objects.values_list("name", flat=True)) == ["gpu"]
    assert not ModelEndpoint.objects.filter(name="qwen").exists()
    assert not AuditEvent.objects.filter(action__in=[actions.MODEL_DEPLOYMENT_CREATED, actions.MODEL_DEPLOYMENT_UPDATED])


@pytest.mark.django_db
def test_the_admin_refuses_the_variable_on_its_field(client, staff):
    # Control: ModelDeployment.clean_fields, run by the admin form's model validation.
    staff.is_superuser = True
    staff.save()
    endpoint = create_endpoint("llama", deployments=[{"name": "gpu", "base_url": URL}])
    deployment = endpoint.deployments.get()
    client.force_login(staff)
    page = reverse("admin:agents_modeldeployment_change", args=[deployment.pk])
    answer = client.post(page, {"endpoint": endpoint.pk, "name": "gpu", "base_url": URL, "upstream_model": "",
                                "api_key_env": "SECRET_KEY", "weight": "1", "priority": "0", "rpm_limit": "",
                                "tpm_limit": "", "enabled": "on"})
    assert answer.status_code == 200 and "api_key_env" in answer.context["adminform"].form.errors
    deployment.refresh_from_db()
    assert deployment.api_key_env == ""


@pytest.mark.django_db
def test_upstream_key_variables_and_those_the_operator_lists_are_accepted(client_for, staff, settings, monkeypatch):
    # Control: RELAY_UPSTREAM_KEY_ENVS in upstream_key_env_allowed (the operator's own names).
    settings.RELAY_UPSTREAM_KEY_ENVS = ["OPENAI_API_KEY"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-listed")
    monkeypatch.setenv("RELAY_UPSTREAM_KEY_GPU", "sk-prefixed")
    monkeypatch.setenv("RELAY_LLM_API_KEY", "sk-default")
    endpoint = create_endpoint("llama", deployments=[{"name": "gpu", "base_url": URL}])
    detail = reverse("platform-deployment-detail", args=[endpoint.deployments.get().pk])
    platform = client_for(staff, via="jwt")
    for name, key in (("OPENAI_API_KEY", "sk-listed"), ("RELAY_UPSTREAM_KEY_GPU", "sk-prefixed"),
                      ("RELAY_LLM_API_KEY", "sk-default")):
        changed = platform.patch(detail, {"api_key_env": name}, format="json")
        assert changed.status_code == 200 and changed.json()["api_key_env"] == name, changed.content
        assert catalog.resolve("llama").deployments[0].api_key == key
    settings.RELAY_UPSTREAM_KEY_ENVS = []
    assert "api_key_env" in assert_envelope(platform.patch(detail, {"api_key_env": "OPENAI_API_KEY"}, format="json"),
                                            400, "invalid")["fields"]


@pytest.mark.django_db
def test_a_row_written_past_validation_gets_no_key_and_one_warning(caplog, monkeypatch):
    # Control: agents.providers.catalog._upstream_key; agents.checks.refused_key_envs (agents.W003).
    monkeypatch.setenv("RELAY_UPSTREAM_KEY_GPU", "sk-gpu")
    create_endpoint("llama", deployments=[{"name": "gpu", "base_url": URL, "api_key_env": "RELAY_UPSTREAM_KEY_GPU"}])
    assert catalog.resolve("llama").deployments[0].api_key == "sk-gpu"
    ModelDeployment.objects.update(api_key_env="SECRET_KEY")
    with caplog.at_level(logging.WARNING, logger="agents.providers.catalog"):
        for _ in range(3):
            catalog.forget_catalog()
            assert catalog.resolve("llama").deployments[0].api_key == ""
    warned = [r for r in caplog.records if r.name == "agents.providers.catalog" and "SECRET_KEY" in r.getMessage()]
    assert len(warned) == 1 and django_settings.SECRET_KEY not in warned[0].getMessage()
    assert [w.id for w in refused_key_envs()] == [KEY_ENV_REFUSED]


@pytest.mark.django_db(transaction=True)
def test_a_forced_secret_key_never_reaches_the_upstream(asgi_server, users, fake_upstream, upstream_model, user_key,
                                                        monkeypatch):
    # Control: agents.providers.catalog._upstream_key (the reviewer's reproduction, with the row
    # written by a queryset update, past every validation).
    def ask(question: str) -> str | None:
        catalog.forget_catalog()  # the live server runs in this process: its next call reads the row
        asked = len(fake_upstream.requests)
        with httpx.Client(timeout=30) as http:  # a new question each time: never the response cache's answer
            answer = http.post(f"{asgi_server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {user_key}"},
                               json={"model": upstream_model, "messages": [{"role": "user", "content": question}]})
        assert answer.status_code == 200, answer.text
        assert len(fake_upstream.requests) == asked + 1
        return fake_upstream.requests[-1].headers.get("authorization")

    monkeypatch.setenv("RELAY_UPSTREAM_KEY_PRIMARY", "sk-primary")
    ModelDeployment.objects.filter(name="primary").update(api_key_env="RELAY_UPSTREAM_KEY_PRIMARY")
    assert ask("hi") == "Bearer sk-primary"  # keys do reach the upstream through this path
    ModelDeployment.objects.filter(name="primary").update(api_key_env="SECRET_KEY")
    sent = ask("hello")
    assert django_settings.SECRET_KEY not in (sent or "") and sent in (None, "", "Bearer", "Bearer ")
