"""The admin console for organization admins, generated from the admin site's registry.

Two organizations, A and B, hold a row of every kind; B's names carry MARK. For every registered
model, A's admin must neither see nor touch B's rows through any admin view (lists, search,
filters, drill-downs, popups, autocomplete, forms, change/history/delete, actions posted by
hand). A model registered later with `org_admin_access` fails `test_every_open_model_has_a_factory`
until it gets a B row here, and then every test below covers it.

Controls: accounts/admin_site.py OrganizationScoped (get_queryset, get_object, response_action,
formfield_for_*, get_list_filter) and OrganizationAdminBackend; accounts.scoping.ADMINISTER.
"""

import datetime as dt
import json
from decimal import Decimal
from unittest import mock

import pytest
from django import forms
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from accounts import scoping
from accounts.actions.keys import create_api_key
from accounts.actions.organizations import create_organization
from accounts.actions.users import create_user, set_role
from accounts.admin_site import MANAGE, READ, check_org_admin_access
from accounts.models import Team, User
from accounts.roles import ROLES, role_of
from agents.models import Conversation, Document, Message
from audit import actions
from audit.models import AuditEvent
from audit.services import record
from billing.models import Budget, BudgetAlert, ModelPrice, OptimizerSettings, UsageRecord
from tests.test_audited_admin_writes import form_data
from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent
from training.models_evaluation import Evaluation, EvaluationItem, EvaluationResult, EvaluationSet

MARK = "zqxmark"
PASSWORD = "correct horse battery staple"


def build_organization(name: str, tag: str) -> dict:
    """An organization with a row of every kind; every name ends in tag."""
    org = create_organization(name)
    members = {role: create_user(f"{role}{tag}", organization=org, role=role, email=f"{role}{tag}@example.com",
                                 password=PASSWORD, team=f"Team{tag}") for role in ROLES}
    team = Team.objects.get(organization=org, name=f"Team{tag}")
    key = create_api_key(members["user"], f"key{tag}").key
    budget = Budget.objects.create(organization=org, scope="user", user=members["user"], period="monthly",
                                   limit_usd=Decimal("5"))
    alert = BudgetAlert.objects.create(budget=budget, period_key=f"p{tag}"[:20], threshold=80, spent_usd="4")
    price = ModelPrice.objects.order_by("pk").first() or ModelPrice.objects.create(
        model="walk-model", input_per_1k="0.001", output_per_1k="0.002")
    usage = UsageRecord.objects.create(organization=org, team=team, user=members["user"], api_key=key, agent="math",
                                       model=price.model, price=price, status="complete", request_id=f"req{tag}")
    conversation = Conversation.objects.create(organization=org, user=members["user"], agent="math",
                                               title=f"Chat{tag}")
    message = Message.objects.create(conversation=conversation, role="user", content=f"hello{tag}")
    document = Document.objects.create(organization=org, owner=members["user"], name=f"doc{tag}.txt",
                                       title=f"Doc{tag}", kind="text", size=1, sha256="0" * 64)
    optimizer = OptimizerSettings.objects.create(organization=org)
    consent = TrainingConsent.objects.create(organization=org, enabled=True, changed_by=members["admin"])
    exclusion = ConversationExclusion.objects.create(conversation=conversation, excluded_by=members["user"])
    dataset = Dataset.objects.create(organization=org, name=f"Dataset{tag}", created_by=members["admin"])
    version = DatasetVersion.objects.create(dataset=dataset, number=1, state="done")
    evaluation_set = EvaluationSet.objects.create(organization=org, name=f"Set{tag}", source="upload", items_count=1,
                                                  created_by=members["admin"])
    item = EvaluationItem.objects.create(evaluation_set=evaluation_set, position=1, prompt=f"prompt{tag}")
    evaluation = Evaluation.objects.create(organization=org, evaluation_set=evaluation_set, targets=["walk-model"],
                                           started_by=members["admin"], total=1)
    result = EvaluationResult.objects.create(evaluation=evaluation, item=item, target="walk-model", status="complete")
    record(actions.USER_UPDATED, actor=members["admin"], organization=org.pk, resource=f"walk:{tag}",
           metadata={"username": f"admin{tag}"})
    event = AuditEvent.objects.filter(resource=f"walk:{tag}").get()
    return {"org": org, "users": members, "team": team, "key": key, "budget": budget, "alert": alert,
            "usage": usage, "conversation": conversation, "message": message, "document": document,
            "optimizer": optimizer, "event": event, "consent": consent, "exclusion": exclusion, "dataset": dataset,
            "version": version, "evaluation_set": evaluation_set, "evaluation": evaluation, "result": result}


# model label -> B's row. A model opened to organization admins must have its row here.
FACTORIES = {
    "accounts.team": lambda b: b["team"],
    "accounts.user": lambda b: b["users"]["user"],
    "accounts.apikey": lambda b: b["key"],
    "billing.budget": lambda b: b["budget"],
    "billing.budgetalert": lambda b: b["alert"],
    "billing.usagerecord": lambda b: b["usage"],
    "billing.optimizersettings": lambda b: b["optimizer"],
    "agents.conversation": lambda b: b["conversation"],
    "agents.message": lambda b: b["message"],
    "agents.document": lambda b: b["document"],
    "audit.auditevent": lambda b: b["event"],
    "accounts.organization": lambda b: b["org"],
    "training.trainingconsent": lambda b: b["consent"],
    "training.conversationexclusion": lambda b: b["exclusion"],
    "training.dataset": lambda b: b["dataset"],
    "training.datasetversion": lambda b: b["version"],
    "training.evaluationset": lambda b: b["evaluation_set"],
    "training.evaluation": lambda b: b["evaluation"],
    "training.evaluationresult": lambda b: b["result"],
}


def label(model) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


REGISTRY = sorted(admin.site._registry.items(), key=lambda item: label(item[0]))
OPEN = [model for model, model_admin in REGISTRY if getattr(model_admin, "org_admin_access", None)]
CLOSED = [model for model, model_admin in REGISTRY if not getattr(model_admin, "org_admin_access", None)]


def ids(models):
    return [label(model) for model in models]


class World:
    def __init__(self):
        self.a = build_organization("Acme", "-acme")
        self.b = build_organization(f"Globex-{MARK}", f"-{MARK}")
        # A superuser who is also a member of A: guarded, no organization admin reaches them.
        self.root_member = User.objects.create_superuser(f"root-{MARK}", "root@example.com", PASSWORD)
        self.root_member.organization = self.a["org"]
        self.root_member.save()
        self.admin = self.a["users"]["admin"]
        self.client = Client()
        self.client.force_login(self.admin)

    def b_row(self, model):
        return FACTORIES[label(model)](self.b)

    def a_row(self, model):
        return FACTORIES[label(model)](self.a)

    def hidden(self, model):
        """The rows of model A's admin must never meet: B's, and guarded ones."""
        rule = scoping.rule_for(model)
        path = rule.administered_by or rule.organization
        rows = model._default_manager.none()
        if path is not None:
            rows = model._default_manager.filter(**{path: self.b["org"].pk})
        if rule.guarded is not None:
            rows = rows | model._default_manager.filter(rule.guarded)
        return rows


@pytest.fixture
def world(db):
    return World()


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def head() -> int:
    return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def denied_since(since: int) -> list:
    return list(AuditEvent.objects.filter(sequence__gt=since, status="denied"))


def state(obj):
    """What a row is in the database (None once deleted)."""
    return type(obj)._default_manager.filter(pk=obj.pk).values().first()


def assert_clean(response, what, world, model=None, echo=None):
    body = response.content.decode()
    if echo:  # the search box and its links repeat the term searched for
        body = body.replace(f'value="{echo}"', "").replace(f"q={echo}", "").replace(f"q%3D{echo}", "")
    assert MARK not in body, f"{what}: B's value shown"
    cl = (response.context or {}).get("cl") if hasattr(response, "context") and response.context else None
    if cl is not None and model is not None:
        leaked = {row.pk for row in cl.result_list} & set(world.hidden(model).values_list("pk", flat=True))
        assert not leaked, f"{what}: B's rows {leaked} listed"
    return cl


def test_every_open_model_has_a_factory():
    missing = [label(model) for model in OPEN if label(model) not in FACTORIES]
    assert not missing, f"models open to organization admins with no B row in FACTORIES: {missing}"
    assert {"accounts.user", "accounts.team", "billing.budget"} <= set(ids(OPEN))


# --- Lists, search, filters, drill-downs, popups -------------------------------------------------

@pytest.mark.parametrize("model", OPEN, ids=ids(OPEN))
def test_lists_never_show_another_organizations_rows(world, model):
    client, base = world.client, url(model, "changelist")
    response = client.get(base)
    assert response.status_code == 200, response.status_code
    cl = assert_clean(response, "plain list", world, model)
    own = world.a_row(model)
    assert own.pk in {row.pk for row in cl.result_list}, "A's own row missing from A's list"
    assert not any("organization" in (spec.title or "") for spec in cl.filter_specs), "organization filter shown"
    if cl.search_fields:
        assert_clean(client.get(base, {"q": MARK}), "search", world, model, echo=MARK)
        b_row = world.b_row(model)
        term = str(getattr(b_row, "request_id", b_row.pk))
        assert_clean(client.get(base, {"q": term}), "search id", world, model, echo=term)
    for spec in cl.filter_specs:
        for choice in spec.choices(cl):
            query = choice["query_string"]
            response = client.get(base + query)
            assert response.status_code == 200, (query, response.status_code)
            assert_clean(response, f"filter {query}", world, model)
    hierarchy = world.client.get(base).context["cl"].model_admin.date_hierarchy
    if hierarchy:
        today = dt.date.today()
        for params in ({}, {"year": today.year}, {"year": today.year, "month": today.month},
                       {"year": today.year, "month": today.month, "day": today.day}):
            response = client.get(base, {f"{hierarchy}__{k}": v for k, v in params.items()})
            assert response.status_code == 200, (params, response.status_code)
            assert_clean(response, f"drill-down {params}", world, model)
    popup = client.get(base, {"_to_field": "id", "_popup": "1"})
    assert popup.status_code == 200, popup.status_code
    assert_clean(popup, "raw-id popup", world, model)


def _autocomplete_sources():
    for source, _ in REGISTRY:
        for field in source._meta.get_fields():
            if (field.many_to_one or field.many_to_many or field.one_to_one) and field.concrete \
                    and field.related_model in admin.site._registry:
                yield source, field


AUTOCOMPLETE = list(_autocomplete_sources())


@pytest.mark.parametrize(("source", "field"), AUTOCOMPLETE,
                         ids=[f"{label(s)}.{f.name}" for s, f in AUTOCOMPLETE])
def test_autocomplete_finds_nothing_of_another_organization(world, source, field):
    for term in ("", MARK, "a"):
        response = world.client.get(reverse("admin:autocomplete"), {
            "app_label": source._meta.app_label, "model_name": source._meta.model_name, "field_name": field.name,
            "term": term})
        assert response.status_code in (200, 403, 404), response.status_code
        assert MARK not in response.content.decode()
        if response.status_code == 200:
            found = {str(result["id"]) for result in json.loads(response.content)["results"]}
            assert not found & {str(pk) for pk in world.hidden(field.related_model).values_list("pk", flat=True)}
            assert getattr(admin.site._registry[field.related_model], "org_admin_access", None), \
                "autocomplete of a model closed to organization admins"


# --- Another organization's objects: 404 and one denied event ------------------------------------

def refused_hidden(world, model, method, path, data=None):
    obj = world.b_row(model)
    before, since = state(obj), head()
    response = getattr(world.client, method)(path, data or {})
    assert response.status_code == 404, (method, path, response.status_code)
    events = denied_since(since)
    assert [e.action for e in events] == [actions.HIDDEN_OBJECT_DENIED], (method, path, [e.action for e in events])
    assert events[0].actor_ref == world.admin.pk
    assert state(obj) == before, (method, path, "row changed")


@pytest.mark.parametrize("model", OPEN, ids=ids(OPEN))
def test_another_organizations_object_is_404_and_audited(world, model):
    pk = world.b_row(model).pk
    refused_hidden(world, model, "get", url(model, "change", pk))
    refused_hidden(world, model, "post", url(model, "change", pk), {"name": f"taken-{MARK}", "_save": "Save"})
    refused_hidden(world, model, "get", url(model, "history", pk))
    refused_hidden(world, model, "get", url(model, "delete", pk))
    refused_hidden(world, model, "post", url(model, "delete", pk), {"post": "yes"})
    if model is User:
        refused_hidden(world, model, "get", reverse("admin:auth_user_password_change", args=[pk]))
        refused_hidden(world, model, "post", reverse("admin:auth_user_password_change", args=[pk]),
                       {"usable_password": "true", "password1": "a new long passphrase 9",
                        "password2": "a new long passphrase 9"})


@pytest.mark.parametrize("model", OPEN, ids=ids(OPEN))
def test_actions_posted_by_hand_with_another_organizations_id(world, model):
    from django.test import RequestFactory

    request = RequestFactory().post("/admin/")
    request.user = world.admin
    offered = list(admin.site._registry[model].get_actions(request))
    obj, own = world.b_row(model), world.a_row(model)
    for name in offered or ["delete_selected"]:
        data = {"action": name, "_selected_action": [own.pk, obj.pk], "index": 0, "post": "yes"}
        before, mine, since = state(obj), state(own), head()
        response = world.client.post(url(model, "changelist"), data)
        assert state(obj) == before and state(own) == mine, (name, "a row changed")
        if offered:
            assert response.status_code == 404, (name, response.status_code)
            assert [e.action for e in denied_since(since)] == [actions.HIDDEN_OBJECT_DENIED]


# --- Forms -------------------------------------------------------------------------------------

def _choice_fields(form):
    for name, field in form.fields.items():
        if isinstance(field, (forms.ModelChoiceField, forms.ModelMultipleChoiceField)):
            yield name, field


@pytest.mark.parametrize("model", OPEN, ids=ids(OPEN))
def test_form_choices_are_the_organizations_own(world, model):
    pages = [url(model, "change", world.a_row(model).pk)]
    if admin.site._registry[model].has_add_permission(_request(world.admin)):
        pages.append(url(model, "add"))
    for page in pages:
        response = world.client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        assert MARK not in response.content.decode(), f"{page}: B's value in the form"
        form = response.context["adminform"].form
        for name, field in _choice_fields(form):
            related = field.queryset.model
            try:
                hidden = world.hidden(related)
            except LookupError:
                assert not field.queryset.exists() or field.disabled, f"{page} {name}: a platform table's rows"
                continue
            assert not field.queryset.filter(pk__in=hidden.values("pk")).exists(), f"{page} {name}: B's rows"


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request


# --- What organization admins may do -----------------------------------------------------------

@pytest.mark.parametrize("model", CLOSED, ids=ids(CLOSED))
def test_platform_models_are_closed_to_organization_admins(world, model):
    existing = model._default_manager.order_by("pk").values_list("pk", flat=True).first() or 1
    for path in (url(model, "changelist"), url(model, "add"), url(model, "change", existing)):
        since = head()
        response = world.client.get(path)
        assert response.status_code == 403, (path, response.status_code)
        assert len(denied_since(since)) == 1, path
    index = world.client.get(reverse("admin:index")).content.decode()
    assert url(model, "changelist") not in index
    app_list = world.client.get(reverse("admin:app_list", args=[model._meta.app_label]))
    assert app_list.status_code in (200, 404) and url(model, "changelist") not in app_list.content.decode()


@pytest.mark.parametrize("model", OPEN, ids=ids(OPEN))
def test_read_models_refuse_writes_and_manage_models_take_them(world, model):
    model_admin, own = admin.site._registry[model], world.a_row(model)
    before = state(own)
    if model_admin.org_admin_access == READ:
        for method, path, data in (("get", url(model, "add"), {}), ("post", url(model, "add"), {"name": "x"}),
                                   ("post", url(model, "change", own.pk), {"name": "x", "_save": "Save"}),
                                   ("get", url(model, "delete", own.pk), {}),
                                   ("post", url(model, "delete", own.pk), {"post": "yes"})):
            response = getattr(world.client, method)(path, data)
            assert response.status_code == 403, (method, path, response.status_code)
        assert state(own) == before
        return
    assert model_admin.org_admin_access == MANAGE
    request = _request(world.admin)
    if model_admin.has_change_permission(request, own):
        change = url(model, "change", own.pk)
        response = world.client.post(change, {**form_data(world.client, change, f"{model._meta.model_name}_form"),
                                              "_save": "Save"})
        assert response.status_code == 302, response.content.decode()[:3000]
    else:
        response = world.client.post(url(model, "delete", own.pk), {"post": "yes"})
        assert response.status_code == 302 and state(own) is None


def test_forbidden_user_fields_are_ignored(world):
    b_org, superpowers = world.b["org"], Permission.objects.get(codename="manage_users").pk
    admin_group = Group.objects.get(name="admin").pk
    forged = {"is_superuser": "on", "is_staff": "on", "groups": [admin_group], "user_permissions": [superpowers],
              "organization": b_org.pk}
    add = url(User, "add")
    data = {**form_data(world.client, add, "user_form"), "username": "forged", "usable_password": "true",
            "password1": "another long passphrase 42", "password2": "another long passphrase 42", "role": "user",
            **forged}
    response = world.client.post(add, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    created = User.objects.get(username="forged")
    assert (created.is_superuser, created.is_staff, created.organization_id) == (False, False, world.a["org"].pk)
    assert role_of(created) == "user" and not created.user_permissions.exists()

    member = world.a["users"]["viewer"]
    change = url(User, "change", member.pk)
    response = world.client.post(change, {**form_data(world.client, change, "user_form"), **forged, "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:3000]
    member.refresh_from_db()
    assert (member.is_superuser, member.is_staff, member.organization_id) == (False, False, world.a["org"].pk)
    assert role_of(member) == "viewer" and not member.user_permissions.exists()


def test_superuser_members_are_out_of_reach_and_own_role_is_fixed(world):
    since = head()
    assert world.client.get(url(User, "change", world.root_member.pk)).status_code == 404
    assert len(denied_since(since)) == 1
    me = world.admin
    change = url(User, "change", me.pk)
    data = form_data(world.client, change, "user_form")
    response = world.client.post(change, {**data, "role": "viewer", "is_active": "", "_save": "Save"})
    assert response.status_code == 302
    me.refresh_from_db()
    assert role_of(me) == "admin" and me.is_active and me.is_staff


def test_role_changes_grant_and_withdraw_admin_access(world):
    member = world.a["users"]["viewer"]
    assert not member.is_staff
    set_role(member, "admin", actor=world.admin)
    member.refresh_from_db()
    event = AuditEvent.objects.filter(action=actions.ROLE_CHANGED).order_by("-sequence").first()
    assert member.is_staff and event.metadata["admin_site"] is True
    set_role(member, "user", actor=world.admin)
    member.refresh_from_db()
    event = AuditEvent.objects.filter(action=actions.ROLE_CHANGED).order_by("-sequence").first()
    assert not member.is_staff and event.metadata["admin_site"] is False
    # Through the console's member form too.
    change = url(User, "change", member.pk)
    response = world.client.post(change, {**form_data(world.client, change, "user_form"), "role": "admin",
                                          "_save": "Save"})
    assert response.status_code == 302
    member.refresh_from_db()
    event = AuditEvent.objects.filter(action=actions.USER_UPDATED, resource=f"user:{member.pk}") \
        .order_by("-sequence").first()
    assert member.is_staff and event.metadata["admin_site"] is True
    assert event.metadata["changes"]["role"] == ["user", "admin"]


# --- Platform operators ------------------------------------------------------------------------

def test_platform_superusers_see_every_organization_with_a_filter(world):
    root = User.objects.create_superuser("operator", "op@example.com", PASSWORD)
    client = Client()
    client.force_login(root)
    for model, _ in REGISTRY:
        response = client.get(url(model, "changelist"))
        assert response.status_code == 200, (label(model), response.status_code)
        cl = response.context["cl"]
        try:
            rule = scoping.rule_for(model)
        except LookupError:
            continue
        if rule.organization not in (None, "pk"):
            assert any(spec.title == "organization" for spec in cl.filter_specs), f"{label(model)}: no organization filter"
        if label(model) in FACTORIES:
            listed = {row.pk for row in cl.result_list}
            assert {world.a_row(model).pk, world.b_row(model).pk} <= listed, label(model)


def test_a_model_opened_without_a_scoping_rule_fails_the_check():
    assert not [e for e in check_org_admin_access() if e.id == "accounts.E002"]
    opened = type("OpenedPriceAdmin", (admin.ModelAdmin,), {"org_admin_access": READ})(ModelPrice, admin.site)
    with mock.patch.dict(admin.site._registry, {ModelPrice: opened}):
        errors = [e for e in check_org_admin_access() if e.id == "accounts.E002"]
    assert errors and "billing.ModelPrice" in errors[0].msg
