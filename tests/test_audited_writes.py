"""The write walker: every successful write through any route leaves exactly one audit event of its
domain action (issue 16): API routes (tests/test_permission_matrix.py ROUTES) and console forms
(PAGES) here, every registered model of the Django admin in tests/test_audited_admin_writes.py.

The admin's own `admin.action` record (from its change log) may remain beside the domain event;
it is counted apart. A write route missing from the tables below fails the suite, so a new write
route without its audit event cannot land unnoticed.
"""

from __future__ import annotations

import io

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key
from audit import actions
from tests.test_permission_matrix import PAGES, ROUTES, page_path, project_routes

PASSWORD = "correct horse battery staple"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
NOT_OFFERED = None  # a method the route refuses (405): it writes nothing, and must record nothing

# (url name, method) -> the domain action its success records. The agents' rows name the events
# their actions record (agents/actions/).
WRITES = {
    ("login", "POST"): actions.LOGIN_SUCCEEDED,
    ("logout", "POST"): actions.LOGOUT,
    ("token-obtain", "POST"): actions.TOKEN_ISSUED,
    ("token-refresh", "POST"): actions.TOKEN_REFRESHED,
    ("user-list", "POST"): actions.USER_CREATED,
    ("user-detail", "PATCH"): actions.USER_UPDATED,
    ("user-detail", "PUT"): NOT_OFFERED,  # the matrix lists it; the viewset answers 405
    ("user-detail", "DELETE"): actions.USER_UPDATED,  # deactivates: is_active in its changes
    ("team-list", "POST"): actions.TEAM_CREATED,
    ("apikey-list", "POST"): actions.API_KEY_CREATED,
    ("apikey-revoke", "POST"): actions.API_KEY_REVOKED,
    ("apikey-rotate", "POST"): actions.API_KEY_ROTATED,
    ("query", "POST"): actions.AGENT_RUN,
    ("stream", "POST"): actions.AGENT_RUN,
    ("openai-chat-completions", "POST"): actions.AGENT_RUN,
    ("vision-analyze", "POST"): actions.AGENT_RUN,
    ("message-feedback", "POST"): "message.feedback_recorded",
    ("conversation-list", "POST"): "conversation.created",
    ("conversation-detail", "PATCH"): "conversation.updated",
    ("conversation-detail", "DELETE"): "conversation.deleted",
    ("document-list", "POST"): actions.DOCUMENT_UPLOADED,
    ("document-detail", "DELETE"): actions.DOCUMENT_DELETED,
    ("document-share", "POST"): actions.DOCUMENT_SHARED,
    ("costs-budget", "POST"): actions.BUDGET_CREATED,
    ("training-consent", "PUT"): actions.TRAINING_CONSENT_CHANGED,
    ("training-exclusion", "POST"): actions.TRAINING_CONVERSATION_EXCLUDED,
    ("training-exclusion", "DELETE"): actions.TRAINING_CONVERSATION_INCLUDED,
    ("training-dataset-list", "POST"): actions.DATASET_CREATED,
    ("training-dataset-detail", "DELETE"): actions.DATASET_DELETED,
    ("training-dataset-build", "POST"): actions.DATASET_BUILD_REQUESTED,  # the build itself runs after the commit
    ("platform-model-list", "POST"): actions.MODEL_ENDPOINT_CREATED,
    ("platform-model-detail", "PATCH"): actions.MODEL_ENDPOINT_UPDATED,
    ("platform-model-detail", "DELETE"): actions.MODEL_ENDPOINT_DELETED,
    ("platform-deployment-list", "POST"): actions.MODEL_DEPLOYMENT_CREATED,
    ("platform-deployment-detail", "PATCH"): actions.MODEL_DEPLOYMENT_UPDATED,
    ("platform-deployment-detail", "DELETE"): actions.MODEL_DEPLOYMENT_DELETED,
    ("training-evaluation-set-list", "POST"): actions.EVALUATION_SET_CREATED,
    ("training-evaluation-set-upload", "POST"): actions.EVALUATION_SET_CREATED,
    ("training-evaluation-set-detail", "DELETE"): actions.EVALUATION_SET_DELETED,
    # Two rows, two events: the evaluation and its own key, minted in the request under the caller's
    # key (whose limits must bind it); its run (a task) records the rest.
    ("training-evaluation-list", "POST"): (actions.API_KEY_CREATED, actions.EVALUATION_STARTED),
}
# Console pages whose form POST changes something (page name -> action).
PAGE_FORMS = {"password-change": actions.PASSWORD_CHANGED}


def audit_head() -> int:
    from audit.models import AuditEvent

    return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def events_since(head: int) -> tuple[list[str], int]:
    """(domain actions recorded after head, in order; how many admin.action records beside them)."""
    from audit.models import AuditEvent

    recorded = list(AuditEvent.objects.filter(sequence__gt=head).order_by("sequence").values_list("action", flat=True))
    return [a for a in recorded if a != actions.ADMIN_ACTION], recorded.count(actions.ADMIN_ACTION)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(buffer, format="PNG")
    return buffer.getvalue()


# --- API routes -----------------------------------------------------------------------------

class Scene:
    """The objects a write acts on, made before the audit head is read."""

    def __init__(self, users):
        self.users, self.admin = users, users["admin"]
        self.client = APIClient()
        self.client.force_login(self.admin)

    def ask(self, **extra) -> dict:
        from agents.models import Conversation

        conversation = Conversation.objects.create(user=self.admin, organization=self.admin.organization, agent="math")
        body = {"query": "1+1", "agent_type": "math", "conversation_id": str(conversation.pk), **extra}
        response = self.client.post(reverse("query"), body, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    def upload(self) -> dict:
        response = self.client.post(reverse("document-list"), {
            "file": SimpleUploadedFile("notes.txt", b"Some notes about the walker.", "text/plain")}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()

    def conversation(self):
        from agents.models import Conversation

        return Conversation.objects.create(user=self.admin, organization=self.admin.organization, agent="math")

    def operator(self) -> APIClient:
        """A platform operator's client: the platform routes are no organization role's."""
        from accounts.models import User

        client = APIClient()
        client.force_login(User.objects.create_superuser("platform-op", "op@example.com", PASSWORD))
        return client

    def model(self, name: str = "walked-model"):
        from agents.actions.endpoints import create_endpoint

        return create_endpoint(name, deployments=[{"name": "primary", "base_url": "http://10.0.0.5:8000/v1"}])


def _anonymous_json(path, body):
    return APIClient(), path, body, "json"


def _api_case(name: str, method: str, scene: Scene):
    """(client, path, data, format) of a write that succeeds; made inside the scene."""
    users, path = scene.users, None
    if name == "login":
        return Client(), reverse("login"), {"username": "admin", "password": PASSWORD}, None
    if name.startswith("platform-"):
        return _platform_case(name, method, scene)
    if name.startswith("training-evaluation"):
        return _evaluation_case(name, scene)
    if name == "token-obtain":
        return _anonymous_json(reverse(name), {"username": "admin", "password": PASSWORD})
    if name == "token-refresh":
        pair = APIClient().post(reverse("token-obtain"), {"username": "admin", "password": PASSWORD}, format="json")
        return _anonymous_json(reverse(name), {"refresh": pair.json()["refresh"]})
    body = {
        "user-list": {"username": "walker", "role": "viewer", "email": "w@example.com"},
        "user-detail": {"email": "changed@example.com"},
        "team-list": {"name": "Walkers"},
        "apikey-list": {"name": "walker key"},
        "query": {"query": "1+1", "agent_type": "math"},
        "stream": {"query": "1+1", "agent_type": "math"},
        "openai-chat-completions": {"model": "relay-math", "messages": [{"role": "user", "content": "1+1"}]},
        "message-feedback": {"rating": 1},
        "conversation-list": {"agent": "math", "title": "walked"},
        "document-share": {"users": [users["user"].pk]},
        "costs-budget": {"scope": "organization", "period": "monthly", "limit_usd": "10", "hard": True},
        "training-consent": {"enabled": True},
        "training-dataset-list": {"name": "walked"},
    }.get(name, {})
    if name == "user-detail":
        path = reverse(name, args=[users["viewer"].pk])
    elif name in ("apikey-revoke", "apikey-rotate"):
        path = reverse(name, args=[create_api_key(scene.admin, "to change").key.pk])
    elif name in ("query", "stream"):
        body["conversation_id"] = str(scene.conversation().pk)
    elif name == "message-feedback":
        path = reverse(name, args=[scene.ask()["message_id"]])
    elif name == "training-exclusion":
        path = reverse(name, args=[scene.conversation().pk])
    elif name in ("training-dataset-detail", "training-dataset-build"):
        from training.actions.consent import set_consent
        from training.models import Dataset

        set_consent(scene.admin.organization, enabled=True, actor=scene.admin)
        path = reverse(name, args=[Dataset.objects.create(organization=scene.admin.organization, name="walked").pk])
    elif name == "conversation-detail":
        path = reverse(name, args=[scene.conversation().pk])
        body = {"title": "walked", "pinned": True} if method == "PATCH" else {}
    elif name in ("document-detail", "document-share"):
        path = reverse(name, args=[scene.upload()["id"]])
    elif name == "document-list":
        return scene.client, reverse(name), {
            "file": SimpleUploadedFile("walk.txt", b"Walked notes.", "text/plain")}, "multipart"
    elif name == "vision-analyze":
        return scene.client, reverse(name), {"image": SimpleUploadedFile("pixel.png", png(), "image/png"),
                                             "question": "What is this?"}, "multipart"
    return scene.client, path or reverse(name), body, "json"


def _platform_case(name: str, method: str, scene: Scene):
    client = scene.operator()
    if name == "platform-model-list":
        return client, reverse(name), {"name": "posted-model", "deployments": [
            {"name": "primary", "base_url": "http://10.0.0.6:8000/v1"}]}, "json"
    if name == "platform-deployment-list":
        return client, reverse(name), {"model": scene.model().pk, "name": "second",
                                       "base_url": "http://10.0.0.7:8000/v1"}, "json"
    model = scene.model()
    if name == "platform-model-detail":
        return client, reverse(name, args=[model.pk]), {"num_retries": 1} if method == "PATCH" else {}, "json"
    deployment = model.deployments.get()
    return client, reverse(name, args=[deployment.pk]), {"weight": 3} if method == "PATCH" else {}, "json"


def _evaluation_case(name: str, scene: Scene):
    from training.actions.evaluations import create_set
    from training.evaluations import parse_upload

    if name == "training-evaluation-set-upload":
        return scene.client, reverse(name), {"name": "walked", "file": SimpleUploadedFile(
            "set.jsonl", b'{"prompt": "1+1", "reference": "2"}\n')}, "multipart"
    if name == "training-evaluation-set-list":
        from tests.training.conftest import build, dataset, turn
        from training.actions.consent import set_consent

        set_consent(scene.admin.organization, enabled=True, actor=scene.admin)
        turn(scene.conversation(), "What is 1+1?", "2")
        version = build(dataset(scene.admin.organization))
        return scene.client, reverse(name), {"name": "from a version", "dataset_version": version.pk}, "json"
    made = create_set(scene.admin.organization, actor=scene.admin, name="walked", items=parse_upload(b'{"prompt": "a"}'))
    if name == "training-evaluation-set-detail":
        return scene.client, reverse(name, args=[made.pk]), {}, "json"
    return scene.client, reverse(name), {"evaluation_set": made.pk, "targets": ["relay-math"]}, "json"


async def _drain(response) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


def _send(client, method: str, path: str, data, fmt):
    call = getattr(client, method.lower())
    response = call(path, data=data, format=fmt) if fmt else call(path, data=data)
    if getattr(response, "streaming", False):
        async_to_sync(_drain)(response)  # a run ends (and is recorded) when its stream does
    return response


def test_every_write_route_declares_its_audit_action():
    """A route's write method (anything but GET/HEAD/OPTIONS) needs a row here; rows need routes."""
    names = {name for _, name, _ in project_routes()}
    writes = {(name, method) for name, methods in ROUTES.items() for method in methods if method not in SAFE_METHODS}
    missing = writes - set(WRITES)
    stale = {(name, method) for name, method in WRITES if name not in names}
    assert not missing, f"write routes without their audit action: {sorted(missing)}"
    assert not stale, f"rows for routes that no longer exist: {sorted(stale)}"


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "method"), sorted(WRITES))
def test_each_api_write_leaves_one_event_of_its_action(users, name, method):
    scene = Scene(users)
    client, path, data, fmt = _api_case(name, method, scene)
    head = audit_head()
    response = _send(client, method, path, data, fmt)
    domain, admin_records = events_since(head)
    if WRITES[name, method] is NOT_OFFERED:
        assert (response.status_code, domain) == (405, []), (name, method, response.status_code, domain)
        return
    assert response.status_code < 400, (name, method, response.status_code, response.content[:500])
    expected = WRITES[name, method]
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    assert (sorted(domain), admin_records) == (sorted(expected), 0), (name, method, domain)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(PAGES))
def test_each_console_form_leaves_one_event_of_its_action(users, name):
    client = Client()
    client.force_login(users["admin"])
    data = {"old_password": PASSWORD, "new_password1": "a different long passphrase 42",
            "new_password2": "a different long passphrase 42"} if name == "password-change" else {}
    head = audit_head()
    response = client.post(page_path(name), data)
    domain, _ = events_since(head)
    if name in PAGE_FORMS:
        assert response.status_code == 302, (name, response.status_code)
        assert domain == [PAGE_FORMS[name]], (name, domain)
    else:
        # A page without a form: a POST changes nothing (it is refused, or answered as a GET).
        assert domain == [] and response.status_code in (200, 403, 405), (name, response.status_code, domain)
