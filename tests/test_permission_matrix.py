"""The URL walker: every route of the project, every role, every way to authenticate.

The expectations here are written from docs/design.md section 4, not read from the views, so a view
that declares the wrong permission fails. A route missing from ROUTES fails too: each new
endpoint must say here who may call it.
"""

import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.exceptions import NoReverseMatch

from tests.conftest import assert_envelope

# docs/design.md section 4, written out again on purpose.
MATRIX = {
    "admin": {"use_math_agent", "use_code_agent", "use_rag_agent", "use_vision_agent", "view_metrics",
              "manage_users", "export_data", "manage_training", "upload_documents", "delete_documents"},
    "user": {"use_math_agent", "use_code_agent", "use_rag_agent", "use_vision_agent", "upload_documents"},
    "viewer": {"use_rag_agent", "view_metrics"},
    "api_user": {"use_math_agent", "use_code_agent", "use_rag_agent"},
}
PUBLIC, SIGNED_IN, ADMIN = "public", "signed-in", "admin"
# Platform operators only (superusers, staff outside every organization): no organization role.
PLATFORM = "platform-staff"

# url name -> {method: requirement}; pages are HTML (anonymous is redirected to the login page).
ROUTES = {
    "healthz": {"GET": PUBLIC},
    "readyz": {"GET": PUBLIC},
    # Platform-wide figures: scrapers use the RELAY_METRICS_TOKEN bearer, operators their own sign-in
    # (tests/observability/test_metrics_endpoint.py); view_metrics is not enough.
    "metrics": {"GET": PLATFORM},
    "schema": {"GET": PUBLIC},
    "api-docs": {"GET": PUBLIC},
    "login": {"GET": PUBLIC},
    "token-obtain": {"POST": PUBLIC},
    "token-refresh": {"POST": PUBLIC},
    "me": {"GET": SIGNED_IN},
    "user-list": {"GET": "manage_users", "POST": "manage_users"},
    "user-detail": {"GET": "manage_users", "PATCH": "manage_users", "PUT": "manage_users", "DELETE": "manage_users"},
    "team-list": {"GET": "manage_users", "POST": "manage_users"},
    "team-detail": {"GET": "manage_users"},
    "apikey-list": {"GET": SIGNED_IN, "POST": SIGNED_IN},
    "apikey-detail": {"GET": SIGNED_IN},
    "apikey-revoke": {"POST": SIGNED_IN},
    "apikey-rotate": {"POST": SIGNED_IN},
    "query": {"POST": SIGNED_IN},  # and then the agent's own permission (tests/agents)
    "stream": {"POST": SIGNED_IN},
    "openai-chat-completions": {"POST": SIGNED_IN},
    "openai-models": {"GET": SIGNED_IN},
    "vision-analyze": {"POST": "use_vision_agent"},
    "agent-list": {"GET": SIGNED_IN},
    "message-feedback": {"POST": SIGNED_IN},
    "conversation-list": {"GET": SIGNED_IN, "POST": SIGNED_IN},
    "conversation-detail": {"GET": SIGNED_IN, "PATCH": SIGNED_IN, "DELETE": SIGNED_IN},
    "document-list": {"GET": SIGNED_IN, "POST": "upload_documents"},
    "document-detail": {"GET": SIGNED_IN, "DELETE": "delete_documents"},
    "document-share": {"POST": "upload_documents"},  # and only the owner or an admin
    "costs-stats": {"GET": "view_metrics"},
    "costs-usage": {"GET": SIGNED_IN},  # own usage; another user's needs view_metrics (tests/billing)
    "costs-breakdown": {"GET": SIGNED_IN},  # rows through the scoping gate (tests/console/test_usage_breakdown.py)
    "costs-budget": {"GET": "view_metrics", "POST": ADMIN},
    "costs-forecast": {"GET": "view_metrics"},
    "costs-export": {"GET": "export_data"},
    "audit-events": {"GET": ADMIN},
    "audit-export": {"GET": "export_data"},
    # The models Relay serves and their deployments: the platform's, never an organization role's.
    "platform-model-list": {"GET": PLATFORM, "POST": PLATFORM},
    "platform-model-detail": {"GET": PLATFORM, "PATCH": PLATFORM, "DELETE": PLATFORM},
    "platform-deployment-list": {"GET": PLATFORM, "POST": PLATFORM},
    "platform-deployment-detail": {"GET": PLATFORM, "PATCH": PLATFORM, "DELETE": PLATFORM},
    # Training data (training/api): manage_training; changing consent is an organization admin's; a
    # conversation's exclusion is its owner's; a download needs export_data as well.
    "training-consent": {"GET": "manage_training", "PUT": ADMIN},
    "training-exclusion": {"GET": SIGNED_IN, "POST": SIGNED_IN, "DELETE": SIGNED_IN},  # own conversations
    "training-dataset-list": {"GET": "manage_training", "POST": "manage_training"},
    "training-dataset-detail": {"GET": "manage_training", "DELETE": "manage_training"},
    "training-dataset-build": {"POST": "manage_training"},
    "training-version-list": {"GET": "manage_training"},
    "training-version-detail": {"GET": "manage_training"},
    "training-version-download": {"GET": "manage_training+export_data"},
    # Evaluations (training/api/evaluation_views.py): manage_training, like the rest of /api/v1/training/.
    "training-evaluation-set-list": {"GET": "manage_training", "POST": "manage_training"},
    "training-evaluation-set-detail": {"GET": "manage_training", "DELETE": "manage_training"},
    "training-evaluation-set-upload": {"POST": "manage_training"},
    "training-evaluation-list": {"GET": "manage_training", "POST": "manage_training"},
    "training-evaluation-detail": {"GET": "manage_training"},
    "training-evaluation-comparison": {"GET": "manage_training"},
    "training-evaluation-results": {"GET": "manage_training"},
    "logout": {"POST": PUBLIC},  # last: it ends the walker's session
}
PAGES = {
    "home": SIGNED_IN,
    "chat": SIGNED_IN,
    "document": SIGNED_IN,  # a document the caller may not read is a 404 (tests/console/test_document_page.py)
    "usage": SIGNED_IN,  # the organization's figures only with view_metrics (tests/console)
    "keys": SIGNED_IN,
    "budgets": ADMIN,
    "training": "manage_training",
    "password-change": SIGNED_IN,
    "password-change-done": SIGNED_IN,
}
SKIPPED_PREFIXES = ("admin/", "static/", "media/")


def walk(patterns=None, prefix=""):
    """(route text, url name, regex group names) for every leaf pattern."""
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.name, list(pattern.pattern.regex.groupindex)


def project_routes():
    return [(route, name, groups) for route, name, groups in walk()
            if not route.lstrip("^").startswith(SKIPPED_PREFIXES)]


def concrete_path(name: str, groups: list[str]) -> str:
    """A path for the route whose parameters name objects that do not exist (nothing gets changed)."""
    for value in ("999999", str(uuid.UUID(int=999999))):
        try:
            return reverse(name, kwargs={group: value for group in groups})
        except NoReverseMatch:
            continue
    raise AssertionError(f"cannot build a path for {name}")


def allowed(role: str, requirement: str) -> bool:
    if requirement in (PUBLIC, SIGNED_IN):
        return True
    if requirement == ADMIN:
        return role == "admin"
    if requirement == PLATFORM:
        return False
    return all(codename in MATRIX[role] for codename in requirement.split("+"))  # "a+b": both


def send(client, method: str, path: str):
    return getattr(client, method.lower())(path, data={}, format="json")


def audit_head() -> int:
    from audit.models import AuditEvent

    return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def denial_problem(since: int, response, actor) -> str | None:
    """Why the denied response did not leave exactly one `denied` event for actor and its request id."""
    from audit.models import AuditEvent

    denied = list(AuditEvent.objects.filter(sequence__gt=since, status="denied"))
    if len(denied) != 1:
        return f"{len(denied)} denied audit events"
    event, actor_id = denied[0], getattr(actor, "pk", None)
    if event.actor_id != actor_id or event.request_id != response.get("X-Request-ID"):
        return f"audit event actor {event.actor_id}/request {event.request_id!r}, expected {actor_id}"
    return None


def test_every_route_is_in_the_table():
    names = {name for _, name, _ in project_routes()}
    assert None not in names, "every route needs a name for the walker"
    missing = names - set(ROUTES) - set(PAGES)
    stale = (set(ROUTES) | set(PAGES)) - names
    assert not missing, f"routes with no expected permissions: {sorted(missing)}"
    assert not stale, f"table rows for routes that no longer exist: {sorted(stale)}"


def _api_cases():
    groups = {name: groups for _, name, groups in project_routes()}
    for name, methods in ROUTES.items():
        for method, requirement in methods.items():
            yield name, groups.get(name, []), method, requirement


@pytest.mark.django_db
@pytest.mark.parametrize("via", ["session", "api_key", "jwt"])
def test_each_role_gets_exactly_what_the_matrix_allows(users, client_for, via):
    failures = []
    for role, user in users.items():
        client = client_for(user, via)
        for name, groups, method, requirement in _api_cases():
            path = concrete_path(name, groups)
            head = audit_head()
            response = send(client, method, path)
            if allowed(role, requirement):
                if response.status_code in (401, 403):
                    failures.append(f"{role} {method} {path}: {response.status_code}, expected allowed")
            elif response.status_code != 403 or response.json()["error"]["code"] != "permission_denied":
                failures.append(f"{role} {method} {path}: {response.status_code}, expected 403")
            elif problem := denial_problem(head, response, user):
                failures.append(f"{role} {method} {path}: {problem}")
    assert not failures, "\n".join(failures)


@pytest.mark.django_db
def test_anonymous_gets_401_with_the_envelope_everywhere_but_public_routes(api_client):
    checked = 0
    for name, groups, method, requirement in _api_cases():
        if requirement == PUBLIC:
            continue
        head = audit_head()
        response = send(api_client, method, concrete_path(name, groups))
        assert_envelope(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert denial_problem(head, response, None) is None, (name, method, denial_problem(head, response, None))
        checked += 1
    assert checked >= 10


def page_path(name: str) -> str:
    """A console page's address; a page about one object gets an object every signed-in user may read."""
    if name != "document":
        return reverse(name)
    from agents.models import Document

    builtin = Document.objects.filter(builtin=True).first() or Document.objects.create(
        name="guide.md", title="Guide", kind="markdown", sha256="0" * 64, builtin=True)
    return reverse(name, kwargs={"pk": builtin.pk})


@pytest.mark.django_db
def test_pages_need_a_signed_in_user(client, users):
    for name, requirement in PAGES.items():
        path = page_path(name)
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), (path, response.status_code)
        for role, user in users.items():
            client.force_login(user)
            status = client.get(path).status_code
            assert status == (200 if allowed(role, requirement) else 403), (role, path, status)
        client.logout()


@pytest.mark.django_db
def test_a_key_acts_with_its_scopes_cut_to_its_owner(users, api_client):
    from accounts.actions.keys import create_api_key
    from accounts.actions.users import set_role

    admin = users["admin"]
    narrow = create_api_key(admin, "read only", scopes=["view_metrics"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow}")
    assert_envelope(api_client.get(reverse("user-list")), 403, "permission_denied")

    full = create_api_key(admin, "full").secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {full}")
    assert api_client.get(reverse("user-list")).status_code == 200
    # The owner loses the role: the key loses it with them, at once.
    set_role(admin, "viewer")
    assert_envelope(api_client.get(reverse("user-list")), 403, "permission_denied")


# --- The admin console (/admin/) ----------------------------------------------------------------
# Written from issue 17, not read from the ModelAdmins: model label -> (what organization admins
# may do: None, "read" or "manage"; which of add/delete the model offers anyone at all).
ADMIN_MODELS = {
    "accounts.organization": (None, {"add", "delete"}),
    "accounts.team": ("manage", {"add", "delete"}),
    "accounts.user": ("manage", {"add", "delete"}),
    "accounts.apikey": ("read", {"delete"}),
    "auth.group": (None, {"add", "delete"}),
    "token_blacklist.outstandingtoken": (None, set()),
    "token_blacklist.blacklistedtoken": (None, set()),
    "audit.auditevent": ("read", set()),
    "audit.auditcheckpoint": (None, set()),
    "audit.auditheadcheckpoint": (None, set()),
    "agents.conversation": ("read", {"delete"}),
    "agents.message": (None, {"delete"}),
    "agents.document": ("manage", {"delete"}),
    "agents.modelendpoint": (None, {"add", "delete"}),
    "agents.modeldeployment": (None, {"add", "delete"}),
    "billing.modelprice": (None, {"add", "delete"}),
    "billing.usagerecord": ("read", set()),
    "billing.budget": ("manage", {"add", "delete"}),
    "billing.budgetalert": ("manage", {"delete"}),
    "billing.optimizersettings": ("manage", {"add", "delete"}),
    # Training (issue 21): read-only in the admin; changes go through the API's audited actions.
    "training.trainingconsent": ("read", set()),
    "training.conversationexclusion": ("read", set()),
    "training.dataset": ("read", set()),
    "training.datasetversion": ("read", set()),
    "training.evaluationset": ("read", set()),
    "training.evaluation": ("read", set()),
    "training.evaluationresult": ("read", set()),
}
MODEL_VIEWS = ("changelist", "add", "change", "history", "delete")
# The site's own pages: url name -> what an organization admin gets (superusers: 200 unless noted).
ADMIN_SITE = {"index": 200, "app_list": "per app", "autocomplete": 200, "jsi18n": 200, "password_change": 200,
              "password_change_done": 200, "login": 302, "logout": "post", "view_on_site": 404,
              "auth_user_password_change": 200}
ANONYMOUS_OPEN = {"login"}  # every other admin URL sends the anonymous to the admin's login form


def admin_url_names() -> set[str]:
    from django.contrib import admin

    return {name for _, name, _ in walk(admin.site.get_urls()) if name}


def test_every_admin_url_is_in_the_table():
    from django.contrib import admin

    registered = {f"{m._meta.app_label}.{m._meta.model_name}" for m in admin.site._registry}
    assert registered == set(ADMIN_MODELS), (f"registered models not in ADMIN_MODELS: {sorted(registered - set(ADMIN_MODELS))}; "
                                             f"stale rows: {sorted(set(ADMIN_MODELS) - registered)}")
    for label, model_admin in ((f"{m._meta.app_label}.{m._meta.model_name}", a) for m, a in admin.site._registry.items()):
        assert getattr(model_admin, "org_admin_access", None) == ADMIN_MODELS[label][0], label
    covered = {f"{label.replace('.', '_')}_{view}" for label in ADMIN_MODELS for view in MODEL_VIEWS} | set(ADMIN_SITE)
    missing = admin_url_names() - covered
    assert not missing, f"admin URLs with no expected outcome: {sorted(missing)}"


def _admin_objects(users):
    """label -> the pk of one row an organization admin of users' organization administers (or any row)."""
    from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.actions.keys import create_api_key
    from accounts.models import Organization
    from agents.actions.endpoints import create_endpoint
    from audit.maintenance import write_head_checkpoint
    from billing.models import ModelPrice
    from tests.accounts.test_admin_console import FACTORIES, build_organization

    mine = build_organization(users["admin"].organization.name + " walk", "-walk")
    # The walker's admin is the organization's: rows of the walk organization belong to another one.
    mine["org"] = users["admin"].organization
    objects = {label: None for label in ADMIN_MODELS}
    for label, factory in FACTORIES.items():
        objects[label] = factory(mine).pk
    for label in ("accounts.team", "accounts.user", "accounts.apikey"):
        objects[label] = {"accounts.team": users["admin"].team, "accounts.user": users["viewer"],
                          "accounts.apikey": create_api_key(users["user"], "walked").key}[label].pk
    objects["accounts.organization"] = Organization.objects.get(pk=users["admin"].organization_id).pk
    objects["auth.group"] = users["viewer"].groups.first().pk
    endpoint = create_endpoint("walk-endpoint", deployments=[{"name": "primary", "base_url": "http://10.0.0.5:8000/v1"}])
    objects["agents.modelendpoint"] = endpoint.pk
    objects["agents.modeldeployment"] = endpoint.deployments.get().pk
    objects["billing.modelprice"] = ModelPrice.objects.create(model="walk-priced", input_per_1k="0.001",
                                                              output_per_1k="0.002").pk
    RefreshToken.for_user(users["user"]).blacklist()
    objects["token_blacklist.outstandingtoken"] = OutstandingToken.objects.first().pk
    objects["token_blacklist.blacklistedtoken"] = BlacklistedToken.objects.first().pk
    objects.update(_evaluation_rows(users["admin"]))
    objects["audit.auditheadcheckpoint"] = write_head_checkpoint().pk
    return objects, mine


def _evaluation_rows(admin) -> dict:
    """One evaluation set, evaluation and result of admin's organization."""
    from training.actions.evaluations import create_set
    from training.evaluations import parse_upload
    from training.models_evaluation import Evaluation, EvaluationResult

    made = create_set(admin.organization, actor=admin, name="walked", items=parse_upload(b'{"prompt": "a"}'))
    evaluation = Evaluation.objects.create(organization=admin.organization, evaluation_set=made, targets=["x"],
                                           started_by=admin)
    result = EvaluationResult.objects.create(evaluation=evaluation, item=made.items.get(), target="x",
                                             status="complete")
    return {"training.evaluationset": made.pk, "training.evaluation": evaluation.pk,
            "training.evaluationresult": result.pk}


def _org_admin_rows_for(users, objects, mine):
    """The organization admin's rows: those of their own organization (the walk organization's are another's)."""
    from agents.models import Conversation, Document
    from billing.models import Budget, BudgetAlert, OptimizerSettings, UsageRecord

    org, member = users["admin"].organization, users["user"]
    budget = Budget.objects.create(organization=org, scope="organization", period="monthly", limit_usd="5")
    conversation = Conversation.objects.create(organization=org, user=member, agent="math", title="walked")
    usage = UsageRecord.objects.filter(pk=objects["billing.usagerecord"]).get()
    usage.pk, usage.organization, usage.user, usage.team, usage.api_key, usage.request_id = (
        None, org, member, None, None, "req-walk-own")
    usage.save()
    from audit.models import AuditEvent
    from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent

    dataset = Dataset.objects.create(organization=org, name="walked")
    training = {
        "training.trainingconsent": TrainingConsent.objects.create(organization=org, enabled=True).pk,
        "training.conversationexclusion": ConversationExclusion.objects.create(conversation=conversation).pk,
        "training.dataset": dataset.pk,
        "training.datasetversion": DatasetVersion.objects.create(dataset=dataset, number=1).pk,
    }
    return {**objects, **training,
            "billing.budget": budget.pk,
            "billing.budgetalert": BudgetAlert.objects.create(budget=budget, period_key="walk", threshold=80,
                                                              spent_usd="4").pk,
            "billing.optimizersettings": OptimizerSettings.objects.create(organization=org).pk,
            "billing.usagerecord": usage.pk,
            "agents.conversation": conversation.pk,
            "agents.document": Document.objects.create(organization=org, owner=member, name="walk.txt", kind="text",
                                                       size=1, sha256="0" * 64).pk,
            "audit.auditevent": AuditEvent.objects.filter(organization_ref=org.pk).order_by("-sequence").first().pk}


def _admin_cases(objects):
    """(url name, path) for every named admin URL but logout."""
    from django.contrib import admin

    for label in ADMIN_MODELS:
        base = f"admin:{label.replace('.', '_')}"
        pk = objects[label] if objects[label] is not None else 999999
        yield label, "changelist", reverse(f"{base}_changelist")
        yield label, "add", reverse(f"{base}_add")
        for view in ("change", "history", "delete"):
            yield label, view, reverse(f"{base}_{view}", args=[pk])
    for app_label in sorted({model._meta.app_label for model in admin.site._registry}):
        yield app_label, "app_list", reverse("admin:app_list", args=[app_label])
    yield None, "auth_user_password_change", reverse("admin:auth_user_password_change", args=[objects["accounts.user"]])
    yield None, "autocomplete", (reverse("admin:autocomplete") + "?app_label=billing&model_name=budget&field_name=team")
    for name in ("index", "jsi18n", "password_change", "password_change_done", "login"):
        yield None, name, reverse(f"admin:{name}")
    from django.contrib.contenttypes.models import ContentType

    from accounts.models import Team

    yield None, "view_on_site", reverse("admin:view_on_site", args=[ContentType.objects.get_for_model(Team).pk,
                                                                     objects["accounts.team"]])


def _expected(who: str, subject, view: str, objects) -> int:
    """The status `who` (anonymous, a role, or superuser) gets, from the rules of issue 17."""
    if who == "anonymous":
        return 200 if view in ANONYMOUS_OPEN else 302
    if who in ("user", "viewer", "api_user"):
        return 403
    if view in ADMIN_SITE and view != "app_list":
        return 302 if view == "login" else ADMIN_SITE[view]
    if view == "app_list":
        open_app = any(label.startswith(f"{subject}.") and access for label, (access, _) in ADMIN_MODELS.items())
        return 200 if who == "superuser" or open_app else 404
    access, offered = ADMIN_MODELS[subject]
    if who == "admin" and access is None:
        return 403
    if view in ("add", "delete"):
        allowed_here = view in offered and (who == "superuser" or access == "manage")
        if not allowed_here:
            return 403
    if view in ("change", "history", "delete") and objects[subject] is None:
        return 302  # no such row: the admin says so on its index
    return 200


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["anonymous", "admin", "user", "viewer", "api_user", "superuser"])
def test_the_admin_urls_for_every_role(who, users):
    from django.test import Client

    from accounts.models import User

    objects, mine = _admin_objects(users)
    objects = _org_admin_rows_for(users, objects, mine)
    client, actor = Client(), None
    if who == "superuser":
        actor = User.objects.create_superuser("operator", "op@example.com", "correct horse battery staple")
    elif who != "anonymous":
        actor = users[who]
    if actor is not None:
        client.force_login(actor)
    failures, checked = [], set()
    for subject, view, path in _admin_cases(objects):
        expected = _expected(who, subject, view, objects)
        since = audit_head()
        response = client.get(path)
        checked.add(view)
        if response.status_code != expected:
            failures.append(f"{who} GET {path}: {response.status_code}, expected {expected}")
            continue
        if expected == 302 and who == "anonymous" and not response["Location"].startswith("/admin/login/"):
            failures.append(f"{who} GET {path}: redirected to {response['Location']}, not the admin login")
        if expected == 403:
            if who in ("user", "viewer", "api_user") and b"admin console" not in response.content:
                failures.append(f"{who} GET {path}: not Relay's 403 page")
            if problem := denial_problem(since, response, actor):
                failures.append(f"{who} GET {path}: {problem}")
    # Signing out works for everyone and is never a refusal.
    response = client.post(reverse("admin:logout"))
    if response.status_code not in (200, 302):
        failures.append(f"{who} POST logout: {response.status_code}")
    assert not failures, "\n".join(failures)
    assert set(MODEL_VIEWS) <= checked
