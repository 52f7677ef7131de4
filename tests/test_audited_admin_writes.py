"""The write walker, part two: every registered model of the Django admin (add, change, delete, list
edit, each admin action) leaves exactly one audit event of its domain action on success.

The admin's own `admin.action` record (from its change log) may remain beside the domain event;
it is counted apart. An admin write missing from ADMIN_WRITES fails the suite. API routes and
console forms are walked in tests/test_audited_writes.py, whose helpers this file shares.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.actions.keys import create_api_key
from accounts.actions.teams import create_team
from audit import actions
from tests.test_audited_writes import PASSWORD, audit_head, events_since

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
