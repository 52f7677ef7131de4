"""The write walker: every successful write through any route leaves exactly one audit event of its
domain action (issue 16): API routes (tests/test_permission_matrix.py ROUTES), console forms (PAGES)
and every registered model of the Django admin (add, change, delete, each admin action).

The admin's own `admin.action` record (from its change log) may remain beside the domain event;
it is counted apart. A write route missing from the tables below fails the suite, so a new write
route without its audit event cannot land unnoticed.
"""

from __future__ import annotations

import io
from html.parser import HTMLParser

import pytest
from asgiref.sync import async_to_sync
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from accounts.actions.keys import create_api_key
from accounts.actions.teams import create_team
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
# (app_label.model, operation) -> action; operation is add, change, delete, password (a user's),
# list_edit (a changelist's editable columns) or action:<name> (applied to one selected object).
ADMIN_WRITES = {
    ("accounts.organization", "add"): actions.ORGANIZATION_CREATED,
    ("accounts.organization", "change"): actions.ORGANIZATION_UPDATED,
    ("accounts.organization", "delete"): actions.ORGANIZATION_DELETED,
    ("accounts.organization", "action:delete_selected"): actions.ORGANIZATION_DELETED,
    ("accounts.team", "add"): actions.TEAM_CREATED,
    ("accounts.team", "change"): actions.TEAM_UPDATED,
    ("accounts.team", "delete"): actions.TEAM_DELETED,
    ("accounts.team", "action:delete_selected"): actions.TEAM_DELETED,
    ("accounts.user", "add"): actions.USER_CREATED,
    ("accounts.user", "change"): actions.USER_UPDATED,
    ("accounts.user", "password"): actions.PASSWORD_CHANGED,
    ("accounts.user", "delete"): actions.USER_DELETED,
    ("accounts.user", "action:delete_selected"): actions.USER_DELETED,
    ("auth.group", "add"): actions.ROLE_CREATED,
    ("auth.group", "change"): actions.ROLE_UPDATED,
    ("auth.group", "delete"): actions.ROLE_DELETED,
    ("auth.group", "action:delete_selected"): actions.ROLE_DELETED,
    ("accounts.apikey", "change"): actions.API_KEY_UPDATED,
    ("accounts.apikey", "delete"): actions.API_KEY_DELETED,
    ("accounts.apikey", "action:delete_selected"): actions.API_KEY_DELETED,
    ("accounts.apikey", "action:revoke_selected"): actions.API_KEY_REVOKED,
    ("billing.modelprice", "add"): actions.PRICE_CREATED,
    ("billing.modelprice", "change"): actions.PRICE_UPDATED,
    ("billing.modelprice", "delete"): actions.PRICE_DELETED,
    ("billing.modelprice", "action:delete_selected"): actions.PRICE_DELETED,
    ("billing.budget", "add"): actions.BUDGET_CREATED,
    ("billing.budget", "change"): actions.BUDGET_UPDATED,
    ("billing.budget", "delete"): actions.BUDGET_DELETED,
    ("billing.budget", "action:delete_selected"): actions.BUDGET_DELETED,
    ("billing.budgetalert", "delete"): actions.BUDGET_ALERT_DELETED,
    ("billing.budgetalert", "action:delete_selected"): actions.BUDGET_ALERT_DELETED,
    ("billing.optimizersettings", "add"): actions.OPTIMIZER_SETTINGS_SAVED,
    ("billing.optimizersettings", "change"): actions.OPTIMIZER_SETTINGS_SAVED,
    ("billing.optimizersettings", "delete"): actions.OPTIMIZER_SETTINGS_DELETED,
    ("billing.optimizersettings", "action:delete_selected"): actions.OPTIMIZER_SETTINGS_DELETED,
    # The agents' models (agents/actions/).
    ("agents.conversation", "delete"): "conversation.deleted",
    ("agents.conversation", "action:delete_selected"): "conversation.deleted",
    ("agents.message", "delete"): "message.deleted",
    ("agents.message", "action:delete_selected"): "message.deleted",
    ("agents.document", "change"): "document.updated",
    ("agents.document", "delete"): actions.DOCUMENT_DELETED,
    ("agents.document", "action:delete_selected"): actions.DOCUMENT_DELETED,
    ("agents.modelendpoint", "add"): "model_endpoint.created",
    ("agents.modelendpoint", "change"): "model_endpoint.updated",
    ("agents.modelendpoint", "list_edit"): "model_endpoint.updated",
    ("agents.modelendpoint", "delete"): "model_endpoint.deleted",
    ("agents.modelendpoint", "action:delete_selected"): "model_endpoint.deleted",
    ("agents.modeldeployment", "add"): actions.MODEL_DEPLOYMENT_CREATED,
    ("agents.modeldeployment", "change"): actions.MODEL_DEPLOYMENT_UPDATED,
    ("agents.modeldeployment", "list_edit"): actions.MODEL_DEPLOYMENT_UPDATED,
    ("agents.modeldeployment", "delete"): actions.MODEL_DEPLOYMENT_DELETED,
    ("agents.modeldeployment", "action:delete_selected"): actions.MODEL_DEPLOYMENT_DELETED,
}


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


# --- The Django admin -----------------------------------------------------------------------

class FormFields(HTMLParser):
    """The fields of the admin's change form as a browser would submit them, unchanged."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.data = form_id, False, {}
        self.select, self.textarea, self.options = None, None, []

    def add(self, name, value):
        self.data.setdefault(name, []).append(value)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside or "name" not in attrs and tag in ("input", "select", "textarea"):
            return
        if tag == "input":
            kind = attrs.get("type", "text")
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            self.add(attrs["name"], attrs.get("value", "on" if kind in ("checkbox", "radio") else ""))
        elif tag == "select":
            self.select, self.options = (attrs["name"], "multiple" in attrs, []), []
        elif tag == "option" and self.select:
            self.options.append((attrs.get("value", ""), "selected" in attrs))
        elif tag == "textarea":
            self.textarea = attrs["name"]
            self.add(self.textarea, "")

    def handle_data(self, data):
        if self.textarea:
            self.data[self.textarea][-1] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            self.textarea = None
        elif tag == "select" and self.select:
            name, multiple, _ = self.select
            chosen = [value for value, selected in self.options if selected]
            if not chosen and not multiple and self.options:
                chosen = [self.options[0][0]]
            for value in chosen:
                self.add(name, value)
            self.select = None


def form_data(client, url: str, form_id: str) -> dict:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    parser = FormFields(form_id)
    parser.feed(response.content.decode())
    return parser.data


def _label(model) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def _make(label: str, users, other):
    """A fresh object of the model for the admin to change or delete."""
    from agents.actions.endpoints import create_endpoint
    from agents.models import Conversation, Document, Message
    from billing.models import Budget, BudgetAlert, ModelPrice, OptimizerSettings

    admin_user, org = users["admin"], users["admin"].organization
    def conversation():
        return (Conversation.objects.create(user=admin_user, organization=org, agent="math"))
    makers = {
        "accounts.organization": lambda: other,
        "accounts.team": lambda: create_team(org, "Walked"),
        "accounts.user": lambda: users["viewer"],
        "auth.group": lambda: Group.objects.create(name="walked-role"),
        "accounts.apikey": lambda: create_api_key(users["user"], "walked").key,
        "billing.modelprice": lambda: ModelPrice.objects.create(model="walked-model", input_per_1k="0.001",
                                                                output_per_1k="0.002"),
        "billing.budget": lambda: Budget.objects.create(organization=org, scope="organization", period="monthly",
                                                        limit_usd="5"),
        "billing.budgetalert": lambda: BudgetAlert.objects.create(
            budget=Budget.objects.create(organization=org, scope="organization", period="daily", limit_usd="5"),
            period_key="walk", threshold=80, spent_usd="4"),
        "billing.optimizersettings": lambda: OptimizerSettings.objects.create(organization=org),
        "agents.conversation": conversation,
        "agents.message": lambda: Message.objects.create(conversation=conversation(), role="user", content="hi"),
        "agents.document": lambda: Document.objects.create(organization=org, owner=admin_user, name="walked.txt",
                                                           kind="text", size=1, sha256="0" * 64),
        "agents.modelendpoint": lambda: create_endpoint("walked-endpoint", deployments=[
            {"name": "primary", "base_url": "http://10.0.0.5:8000/v1"}]),
        "agents.modeldeployment": lambda: create_endpoint("walked-endpoint", deployments=[
            {"name": "walked-deployment", "base_url": "http://10.0.0.5:8000/v1"}]).deployments.get(),
    }
    return makers[label]()


def _add_data(label: str, users, other) -> dict:
    if label == "agents.modeldeployment":
        return {"endpoint": _make("agents.modelendpoint", users, other).pk, "name": "added",
                "base_url": "http://10.0.0.5:8000/v1"}
    org = users["admin"].organization
    password = "another long passphrase 42"
    return {
        "accounts.organization": {"name": "Initech", "slug": "initech", "time_zone": "UTC"},
        "accounts.team": {"name": "Added", "organization": org.pk},
        "accounts.user": {"username": "added", "usable_password": "true", "password1": password,
                          "password2": password, "email": "added@example.com", "organization": org.pk,
                          "groups": [Group.objects.get(name="viewer").pk]},
        "auth.group": {"name": "added-role", "permissions": [Permission.objects.first().pk]},
        "billing.modelprice": {"model": "added-model", "input_per_1k": "0.001", "output_per_1k": "0.002"},
        "billing.budget": {"organization": org.pk, "scope": "organization", "period": "weekly", "limit_usd": "5",
                           "alert_thresholds": "[80]"},
        "billing.optimizersettings": {"organization": other.pk},
        "agents.modelendpoint": {"name": "added-endpoint", "provider_kind": "openai", "tier": "standard"},
    }.get(label, {})


def admin_operations():
    """(label, operation) for every write the admin offers a superuser."""
    from accounts.models import User

    request = RequestFactory().post("/admin/")  # writes are POSTs (some admins allow GET only)
    request.user = User(is_superuser=True, is_staff=True, is_active=True)
    found = set()
    for model, model_admin in admin.site._registry.items():
        label = _label(model)
        if model_admin.has_add_permission(request):
            found.add((label, "add"))
        if model_admin.has_change_permission(request):
            found.add((label, "change"))
            if model_admin.list_editable:
                found.add((label, "list_edit"))
        if model_admin.has_delete_permission(request):
            found.add((label, "delete"))
        if getattr(model_admin, "change_password_form", None):
            found.add((label, "password"))
        found.update((label, f"action:{name}") for name in model_admin.get_actions(request))
    return found


@pytest.mark.django_db
def test_every_admin_write_declares_its_audit_action():
    offered = admin_operations()
    assert not offered - set(ADMIN_WRITES), f"admin writes without their audit action: {sorted(offered - set(ADMIN_WRITES))}"
    assert not set(ADMIN_WRITES) - offered, f"rows for admin writes that no longer exist: {sorted(set(ADMIN_WRITES) - offered)}"


def _admin_request(client, label: str, operation: str, users, other):
    app, model = label.split(".")
    base = f"admin:{app}_{model}"
    if operation == "add":
        url = reverse(f"{base}_add")
        data = form_data(client, url, f"{model}_form")
        data.update(_add_data(label, users, other))
        return url, data
    obj = _make(label, users, other)
    if operation == "change":
        url = reverse(f"{base}_change", args=[obj.pk])
        return url, {**form_data(client, url, f"{model}_form"), "_save": "Save"}
    if operation == "password":
        password = "yet another long passphrase 7"
        return (reverse("admin:auth_user_password_change", args=[obj.pk]),
                {"usable_password": "true", "password1": password, "password2": password})
    if operation == "delete":
        return reverse(f"{base}_delete", args=[obj.pk]), {"post": "yes"}
    changelist = reverse(f"{base}_changelist")
    if operation == "list_edit":
        data = form_data(client, f"{changelist}?q={obj.name}", "changelist-form")
        for field in admin.site._registry[type(obj)].list_editable:  # an unchanged row is not saved: change it
            key = f"form-0-{field}"
            if isinstance(data.get(key), str) and data[key] not in ("on", "true"):
                data[key] += "-edited"
            elif key in data:
                del data[key]  # an unchecked box is absent from the post
            else:
                data[key] = "on"
        return changelist, {**data, "_save": "Save"}
    return changelist, {"action": operation.removeprefix("action:"), "_selected_action": [obj.pk], "post": "yes",
                        "index": 0}


@pytest.mark.django_db
@pytest.mark.parametrize(("label", "operation"), sorted(ADMIN_WRITES))
def test_each_admin_write_leaves_one_event_of_its_action(users, label, operation):
    from accounts.actions.organizations import create_organization
    from accounts.models import User

    root = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    other = create_organization("Walked Org")
    client = Client()
    client.force_login(root)
    url, data = _admin_request(client, label, operation, users, other)
    head = audit_head()
    response = client.post(url, data)
    assert response.status_code == 302, (label, operation, response.status_code,
                                         response.content.decode()[:3000])
    domain, admin_records = events_since(head)
    assert domain == [ADMIN_WRITES[label, operation]], (label, operation, domain)
    assert admin_records <= 1, (label, operation, admin_records)
