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
    "conversation-detail": {"GET": SIGNED_IN, "DELETE": SIGNED_IN},
    "document-list": {"GET": SIGNED_IN, "POST": "upload_documents"},
    "document-detail": {"GET": SIGNED_IN, "DELETE": "delete_documents"},
    "document-share": {"POST": "upload_documents"},  # and only the owner or an admin
    "costs-stats": {"GET": "view_metrics"},
    "costs-usage": {"GET": SIGNED_IN},  # own usage; another user's needs view_metrics (tests/billing)
    "costs-budget": {"GET": "view_metrics", "POST": ADMIN},
    "costs-forecast": {"GET": "view_metrics"},
    "costs-export": {"GET": "export_data"},
    "audit-events": {"GET": ADMIN},
    "audit-export": {"GET": "export_data"},
    "logout": {"POST": PUBLIC},  # last: it ends the walker's session
}
PAGES = {
    "home": SIGNED_IN,
    "chat": SIGNED_IN,
    "usage": SIGNED_IN,  # the organization's figures only with view_metrics (tests/console)
    "keys": SIGNED_IN,
    "budgets": ADMIN,
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
    return requirement in MATRIX[role]


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


@pytest.mark.django_db
def test_pages_need_a_signed_in_user(client, users):
    for name, requirement in PAGES.items():
        path = reverse(name)
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
