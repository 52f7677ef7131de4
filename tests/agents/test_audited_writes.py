"""Every write of the agents app outside a run leaves exactly one audit event of its action, and a
refused write none (agents/actions/)."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.models import Team, User
from agents.models import Conversation, Document
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db
SECRET_TEXT = b"Project Nightingale launches on the ninth of March."


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def only(action: str) -> AuditEvent:
    found = events(action)
    assert len(found) == 1, [(e.action, e.resource) for e in found]
    return found[0]


def upload(client, name="plan.txt", data=SECRET_TEXT, content_type="text/plain"):
    return client.post(reverse("document-list"), {"file": SimpleUploadedFile(name, data, content_type)},
                       format="multipart")


def assert_by(event: AuditEvent, user, resource: str) -> None:
    assert (event.status, event.actor_id, event.organization_id, event.resource) == (
        "success", user.pk, user.organization_id, resource)


def test_an_upload_is_recorded_once_without_the_content(users, client_for):
    response = upload(client_for(users["user"]))
    assert response.status_code == 201, response.content
    event = only(actions.DOCUMENT_UPLOADED)
    assert_by(event, users["user"], f"document:{response.json()['id']}")
    assert event.metadata["name"] == "plan.txt" and event.metadata["kind"] == "text"
    assert "Nightingale" not in str(event.metadata)


def test_a_refused_or_unusable_upload_is_not_recorded(users, client_for):
    assert_envelope(upload(client_for(users["viewer"])), 403)  # no upload_documents
    assert_envelope(upload(client_for(users["user"]), "empty.txt", b""), 400)
    assert_envelope(upload(client_for(users["user"]), "program.exe", bytes(range(256)) * 10,
                        "application/octet-stream"), 400)  # the ingestion error: no document, no event
    assert not Document.objects.filter(builtin=False).exists()
    assert events(actions.DOCUMENT_UPLOADED) == []


@pytest.fixture
def document(users, client_for):
    response = upload(client_for(users["user"]))
    assert response.status_code == 201, response.content
    return Document.objects.get(pk=response.json()["id"])


def test_a_delete_is_recorded_once_and_a_refused_one_not_at_all(users, client_for, other_users, document):
    detail = reverse("document-detail", args=[document.pk])
    assert_envelope(client_for(users["user"]).delete(detail), 403)  # the owner lacks delete_documents
    assert_envelope(client_for(other_users["admin"]).delete(detail), 404)  # another organization's
    builtin = Document.objects.filter(builtin=True).first()
    assert_envelope(client_for(users["admin"]).delete(reverse("document-detail", args=[builtin.pk])), 403)
    assert events(actions.DOCUMENT_DELETED) == []
    assert client_for(users["admin"]).delete(detail).status_code == 204
    event = only(actions.DOCUMENT_DELETED)
    assert_by(event, users["admin"], f"document:{document.pk}")
    assert event.metadata["name"] == "plan.txt" and event.metadata["owner"] == users["user"].username


def test_a_share_is_recorded_once_naming_whom_and_a_refused_one_not_at_all(users, client_for, other_users,
                                                                          document):
    share = reverse("document-share", args=[document.pk])
    owner = client_for(users["user"])
    assert_envelope(owner.post(share, {"users": [other_users["user"].pk]}, format="json"), 400)
    assert_envelope(client_for(users["viewer"]).post(share, {"users": [users["viewer"].pk]}, format="json"), 403)
    assert events(actions.DOCUMENT_SHARED) == []
    team = Team.objects.get(organization=users["user"].organization, name="Research")
    response = owner.post(share, {"users": [users["viewer"].pk], "teams": [team.pk]}, format="json")
    assert response.status_code == 200, response.content
    event = only(actions.DOCUMENT_SHARED)
    assert_by(event, users["user"], f"document:{document.pk}")
    assert (event.metadata["users"], event.metadata["teams"]) == ([users["viewer"].pk], [team.pk])


def _answer(client) -> str:
    response = client.post(reverse("query"), {"query": "integrate x^2", "agent_type": "math"}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["message_id"]


def test_feedback_is_recorded_once_and_refused_feedback_not_at_all(users, client_for):
    client = client_for(users["user"])
    message_id = _answer(client)
    url = reverse("message-feedback", args=[message_id])
    assert_envelope(client.post(url, {"rating": 5}, format="json"), 400)
    assert_envelope(client_for(users["admin"]).post(url, {"rating": 1}, format="json"), 404)
    assert events(actions.FEEDBACK_RECORDED) == []
    assert client.post(url, {"rating": -1}, format="json").status_code == 200
    event = only(actions.FEEDBACK_RECORDED)
    assert_by(event, users["user"], f"message:{message_id}")
    assert (event.metadata["rating"], event.metadata["quality_score"]) == (-1, 0.75)
    assert "x**3" not in str(event.metadata)  # the answer's text stays out of the trail


def test_creating_a_conversation_is_recorded_once_and_a_refused_one_not_at_all(users, client_for):
    url = reverse("conversation-list")
    assert_envelope(client_for(users["viewer"]).post(url, {"agent": "math"}, format="json"), 403)
    assert_envelope(client_for(users["user"]).post(url, {"agent": "nonsense"}, format="json"), 400)
    assert events(actions.CONVERSATION_CREATED) == []
    response = client_for(users["user"]).post(url, {"agent": "math", "title": "Homework"}, format="json")
    assert response.status_code == 201, response.content
    event = only(actions.CONVERSATION_CREATED)
    assert_by(event, users["user"], f"conversation:{response.json()['id']}")
    assert event.metadata == {"agent": "math"}  # titles are the user's words: not copied


def test_deleting_a_conversation_is_recorded_once_and_a_refused_one_not_at_all(users, client_for):
    conversation = Conversation.objects.create(user=users["user"], organization=users["user"].organization,
                                               agent="math", title="Homework")
    detail = reverse("conversation-detail", args=[conversation.pk])
    assert_envelope(client_for(users["admin"]).delete(detail), 404)  # not theirs
    assert events(actions.CONVERSATION_DELETED) == []
    assert client_for(users["user"]).delete(detail).status_code == 204
    event = only(actions.CONVERSATION_DELETED)
    assert_by(event, users["user"], f"conversation:{conversation.pk}")
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


@pytest.fixture
def operator(client):
    root = User.objects.create_superuser("root", "root@example.com", "correct horse battery staple")
    client.force_login(root)
    return root


def test_admin_deletes_are_recorded_as_the_domain_action_beside_the_admin_action(users, operator, client,
                                                                                  document):
    conversation = Conversation.objects.create(user=users["user"], organization=users["user"].organization,
                                               agent="math")
    response = client.post(f"/admin/agents/document/{document.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Document.objects.filter(pk=document.pk).exists()
    event = only(actions.DOCUMENT_DELETED)
    assert (event.actor_id, event.organization_id, event.resource) == (
        operator.pk, users["user"].organization_id, f"document:{document.pk}")
    response = client.post(f"/admin/agents/conversation/{conversation.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    event = only(actions.CONVERSATION_DELETED)
    assert (event.actor_id, event.resource) == (operator.pk, f"conversation:{conversation.pk}")
    assert len(events(actions.ADMIN_ACTION)) == 2


def test_admin_bulk_delete_records_one_event_per_document(users, operator, client):
    docs = [Document.objects.create(organization=users["user"].organization, owner=users["user"], name=f"d{n}",
                                    kind="text", sha256="0" * 64) for n in range(2)]
    response = client.post("/admin/agents/document/", {"action": "delete_selected", "post": "yes",
                                                       "_selected_action": [d.pk for d in docs]})
    assert response.status_code == 302 and not Document.objects.filter(pk__in=[d.pk for d in docs]).exists()
    assert sorted(e.resource for e in events(actions.DOCUMENT_DELETED)) == sorted(f"document:{d.pk}" for d in docs)


def test_an_admin_edit_of_a_document_is_recorded_with_its_changes(users, operator, client, document):
    page = f"/admin/agents/document/{document.pk}/change/"
    response = client.post(page, {"title": "Renamed", "owner": users["admin"].pk,
                                  "organization": users["user"].organization_id})
    assert response.status_code == 302, response.content[:2000]
    event = only(actions.DOCUMENT_UPDATED)
    assert (event.actor_id, event.resource) == (operator.pk, f"document:{document.pk}")
    assert event.metadata["changes"]["owner_id"] == [users["user"].pk, users["admin"].pk]


def _inline(rows: list[dict], initial: int = 0) -> dict:
    """The deployment inline's part of the model's admin form (prefix "deployments")."""
    data = {"deployments-TOTAL_FORMS": str(len(rows)), "deployments-INITIAL_FORMS": str(initial),
            "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000"}
    for index, row in enumerate(rows):
        data.update({f"deployments-{index}-{field}": value for field, value in row.items()})
    return data


def _deployment_row(name: str, url: str, **extra) -> dict:
    return {"name": name, "base_url": url, "upstream_model": "", "api_key_env": "RELAY_UPSTREAM_KEY_TINY",
            "weight": "1", "priority": "0", "rpm_limit": "", "tpm_limit": "", "enabled": "on", **extra}


def test_admin_writes_of_models_and_deployments_are_recorded_once_each(operator, client):
    from agents.models import ModelEndpoint

    form = {"name": "tiny", "provider_kind": "openai", "tier": "mini", "supports_tools": "on", "enabled": "on",
            "routing_strategy": "least_busy", "allowed_fails": "3", "failure_window_seconds": "60",
            "cooldown_seconds": "30", "num_retries": "2", "first_token_timeout_seconds": "60", "fallbacks": "",
            "context_window_fallback": ""}
    rows = [_deployment_row("a", "http://vllm-a:8000/v1"), _deployment_row("b", "http://vllm-b:8000/v1")]
    response = client.post("/admin/agents/modelendpoint/add/", {**form, **_inline(rows)})
    assert response.status_code == 302, response.content.decode()[:3000]
    endpoint = ModelEndpoint.objects.get(name="tiny")
    created = only(actions.MODEL_ENDPOINT_CREATED)  # the model and its inline's deployments: one event
    assert (created.actor_id, created.resource) == (operator.pk, f"model_endpoint:{endpoint.pk}")
    assert [(d["name"], d["api_key_env"]) for d in created.metadata["deployments"]] == [
        ("a", "RELAY_UPSTREAM_KEY_TINY"), ("b", "RELAY_UPSTREAM_KEY_TINY")]
    assert events(actions.MODEL_DEPLOYMENT_CREATED) == []
    a, b = endpoint.deployments.order_by("name")

    # One edit: the model disabled, deployment a reweighted, b deleted, c added.
    form.pop("enabled")
    existing = [{**_deployment_row("a", a.base_url, weight="5"), "id": str(a.pk), "endpoint": str(endpoint.pk)},
                {**_deployment_row("b", b.base_url), "id": str(b.pk), "endpoint": str(endpoint.pk), "DELETE": "on"},
                _deployment_row("c", "http://vllm-c:8000/v1")]
    response = client.post(f"/admin/agents/modelendpoint/{endpoint.pk}/change/", {**form, **_inline(existing, 2)})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert only(actions.MODEL_ENDPOINT_UPDATED).metadata["changes"] == {"enabled": [True, False]}
    assert only(actions.MODEL_DEPLOYMENT_UPDATED).metadata["changes"] == {"weight": [1, 5]}
    assert only(actions.MODEL_DEPLOYMENT_DELETED).metadata["name"] == "b"
    assert only(actions.MODEL_DEPLOYMENT_CREATED).metadata["name"] == "c"
    assert sorted(endpoint.deployments.values_list("name", flat=True)) == ["a", "c"]

    # Two rows with one name: the form says so and nothing is written.
    since = AuditEvent.objects.count()
    clash = [_deployment_row("d", "http://x:1/v1"), _deployment_row("d", "http://y:1/v1")]
    response = client.post("/admin/agents/modelendpoint/add/", {**form, "name": "clash", **_inline(clash)})
    assert response.status_code == 200 and not ModelEndpoint.objects.filter(name="clash").exists()
    assert AuditEvent.objects.count() == since

    response = client.post(f"/admin/agents/modelendpoint/{endpoint.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not ModelEndpoint.objects.filter(pk=endpoint.pk).exists()
    deleted = only(actions.MODEL_ENDPOINT_DELETED)  # its deployments go with it, listed in the one event
    assert deleted.resource == f"model_endpoint:{endpoint.pk}"
    assert [d["name"] for d in deleted.metadata["deployments"]] == ["a", "c"]
    assert len(events(actions.MODEL_DEPLOYMENT_DELETED)) == 1


def test_an_admin_delete_of_one_message_is_recorded_once(users, operator, client):
    from agents.models import Message

    conversation = Conversation.objects.create(user=users["user"], organization=users["user"].organization,
                                               agent="math")
    message = Message.objects.create(conversation=conversation, role="user", content="private words")
    response = client.post(f"/admin/agents/message/{message.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Message.objects.filter(pk=message.pk).exists()
    event = only(actions.MESSAGE_DELETED)
    assert (event.actor_id, event.organization_id, event.resource) == (
        operator.pk, users["user"].organization_id, f"message:{message.pk}")
    assert "private words" not in str(event.metadata)
