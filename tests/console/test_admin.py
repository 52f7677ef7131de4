"""The Django admin as the console: every list page opens, fast and with bounded queries."""

import re

import pytest
from django.urls import reverse

from tests.console.conftest import add_usage

pytestmark = pytest.mark.django_db
CHANGELISTS = ["accounts_user", "accounts_organization", "accounts_team", "accounts_apikey", "billing_budget",
               "billing_modelprice", "billing_usagerecord", "agents_modelendpoint", "agents_document",
               "agents_conversation", "agents_message", "audit_auditevent"]


@pytest.fixture
def superuser(org):
    from accounts.actions.users import create_user

    user = create_user("root", organization=org, role="admin", password="correct horse battery staple")
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_changelists_open_with_bounded_queries(client, superuser, users, changelist, django_assert_max_num_queries):
    from accounts.actions.keys import create_api_key

    for role, user in users.items():
        add_usage(user, 30)
        create_api_key(user, f"{role} key")
    client.force_login(superuser)
    url = reverse(f"admin:{changelist}_changelist")
    client.get(url)
    with django_assert_max_num_queries(20):
        assert client.get(url).status_code == 200


def test_audit_events_are_read_only_and_searchable(client, superuser, users):
    from audit.models import AuditEvent

    client.force_login(superuser)
    event = AuditEvent.objects.order_by("-sequence").first()
    response = client.get(reverse("admin:audit_auditevent_changelist"), {"q": event.actor_name or "root",
                                                                           "status__exact": "success"})
    assert response.status_code == 200
    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    change = client.post(reverse("admin:audit_auditevent_change", args=[event.pk]), {"action": "tampered"})
    assert change.status_code == 403
    event.refresh_from_db()
    assert event.action != "tampered"


def test_revoke_action_revokes_keys(client, superuser, users):
    from accounts.actions.keys import create_api_key
    from accounts.models import APIKey

    key = create_api_key(users["user"], "leaked").key
    client.force_login(superuser)
    response = client.post(reverse("admin:accounts_apikey_changelist"),
                           {"action": "revoke_selected", "_selected_action": [key.pk]})
    assert response.status_code == 302
    assert APIKey.objects.get(pk=key.pk).revoked_at is not None


def test_models_can_be_added_with_their_deployments(client, superuser):
    from agents.models import ModelEndpoint
    from agents.providers.catalog import resolve

    client.force_login(superuser)
    assert b'name="deployments-TOTAL_FORMS"' in client.get(reverse("admin:agents_modelendpoint_add")).content
    response = client.post(reverse("admin:agents_modelendpoint_add"), {
        "name": "vllm-llama", "provider_kind": "openai", "tier": "standard", "supports_tools": "on", "enabled": "on",
        "routing_strategy": "priority", "allowed_fails": "3", "failure_window_seconds": "60", "cooldown_seconds": "30",
        "num_retries": "2", "first_token_timeout_seconds": "20", "fallbacks": "local-large, local-mini",
        "context_window_fallback": "",
        "deployments-TOTAL_FORMS": "1", "deployments-INITIAL_FORMS": "0", "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000", "deployments-0-name": "gpu-1", "deployments-0-base_url":
        "http://vllm:8000/v1", "deployments-0-upstream_model": "meta-llama/Llama-3.1-8B-Instruct",
        "deployments-0-api_key_env": "", "deployments-0-weight": "2", "deployments-0-priority": "1",
        "deployments-0-rpm_limit": "600", "deployments-0-tpm_limit": "", "deployments-0-enabled": "on"})
    assert response.status_code == 302, response.content.decode()[:3000]
    model = ModelEndpoint.objects.get(name="vllm-llama", enabled=True)
    assert model.fallbacks == ["local-large", "local-mini"]
    assert list(model.deployments.values_list("name", "base_url", "weight", "priority", "rpm_limit", "tpm_limit")) \
        == [("gpu-1", "http://vllm:8000/v1", 2, 1, 600, None)]
    served = resolve("vllm-llama")
    assert served.policy.strategy == "priority" and served.policy.first_token_timeout == 20.0
    assert served.deployments[0].upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    listing = client.get(reverse("admin:agents_modelendpoint_changelist")).content.decode()
    assert "1 of 1" in listing and "Priority order" in listing  # the deployments column and the strategy


def test_a_model_form_refuses_unknown_fallbacks_and_itself(client, superuser):
    from agents.models import ModelEndpoint

    client.force_login(superuser)
    response = client.post(reverse("admin:agents_modelendpoint_add"), {
        "name": "loop", "provider_kind": "openai", "tier": "standard", "enabled": "on", "routing_strategy": "least_busy",
        "allowed_fails": "3", "failure_window_seconds": "60", "cooldown_seconds": "30", "num_retries": "2",
        "first_token_timeout_seconds": "60", "fallbacks": "loop, nowhere", "context_window_fallback": "nowhere",
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"})
    assert response.status_code == 200 and not ModelEndpoint.objects.filter(name="loop").exists()
    errors = response.context["adminform"].form.errors.as_data()
    assert [e.message for e in errors["fallbacks"]] == ["A model cannot fall back to itself.",
                                                        "'nowhere' is not a served model."]
    assert [e.message for e in errors["context_window_fallback"]] == ["'nowhere' is not a served model."]


@pytest.mark.parametrize("changelist", ["accounts_user", "accounts_apikey", "billing_budget", "agents_message",
                                        "billing_usagerecord", "audit_auditevent"])
def test_changelist_queries_do_not_grow_with_rows(client, superuser, users, other_users, changelist):
    """No N+1: twice the rows (users, keys, budgets, usage, audit events) cost no extra query."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.actions.keys import create_api_key
    from accounts.actions.users import create_user
    from billing.models import Budget

    def grow(tag):
        for role, user in {**users, **other_users}.items():
            extra = create_user(f"{role}-{tag}", organization=user.organization, role=role, team=f"T{tag}")
            create_api_key(extra, f"{role} {tag}")
            add_usage(extra, 3)
            Budget.objects.create(organization=user.organization, scope="user", user=extra, period="daily",
                                  limit_usd="1")

    client.force_login(superuser)
    url = reverse(f"admin:{changelist}_changelist")
    grow("a")
    client.get(url)
    with CaptureQueriesContext(connection) as before:
        client.get(url)
    grow("b")
    with CaptureQueriesContext(connection) as after:
        assert client.get(url).status_code == 200
    assert len(after) == len(before), [q["sql"][:120] for q in after.captured_queries]


ADMIN_PAGES = ["admin:index", "admin:accounts_user_changelist", "admin:accounts_user_add", "admin:billing_budget_add",
               "admin:audit_auditevent_changelist"]


def no_inline_script(html: str) -> None:
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"<[^>]+\son[a-z]+=", html), "inline event handlers"


@pytest.mark.parametrize("name", ADMIN_PAGES)
def test_an_organization_admins_pages_carry_relays_bar_and_theme(client, users, name):
    # Control: templates/admin/base_site.html (the console's top bar, static/css/admin.css).
    client.force_login(users["admin"])
    response = client.get(reverse(name))
    html = response.content.decode()
    assert response.status_code == 200 and 'class="topbar"' in html
    assert re.search(r'data-nav="admin"\s+aria-current="page"', html) and 'href="/chat/" data-nav="chat"' in html
    assert "css/admin.css" in html and "theme-toggle" in html and '<span class="admin-scope">Acme</span>' in html
    no_inline_script(html)


def test_the_admin_login_page_carries_relays_bar(client):
    html = client.get(reverse("admin:login")).content.decode()
    assert 'class="topbar"' in html and "css/admin.css" in html and 'data-nav="chat"' not in html
    no_inline_script(html)


@pytest.mark.parametrize("role", ["user", "viewer", "api_user"])
def test_members_get_relays_403_page_not_the_admin_login(client, users, role):
    # Controls: RelayAdminSite.refuse_signed_in_outsider and templates/403.html (the console's page).
    client.force_login(users[role])
    for path in ("/admin/", "/admin/login/", "/admin/billing/budget/add/"):
        response = client.get(path)
        html = response.content.decode()
        assert response.status_code == 403 and "text/html" in response["Content-Type"], path
        assert "The admin console is not yours" in html and f'<strong>{role}</strong>' in html
        assert 'href="/chat/" data-nav="chat"' in html and 'data-nav="admin"' not in html  # the console's bar
        assert 'id="login-form"' not in html and "css/admin.css" not in html
        no_inline_script(html)
