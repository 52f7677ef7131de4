"""Console pages rendered by the server: who sees what, bounded queries, no inline scripts."""

import json
import re
from datetime import timedelta

import pytest
from django.urls import reverse

from tests.conftest import AWKWARD_MOMENTS
from tests.console.conftest import add_usage

pytestmark = pytest.mark.django_db
NAV = re.compile(r'data-nav="([\w-]+)"')
EXPECTED_NAV = {
    "admin": ["chat", "usage", "keys", "budgets", "training", "admin", "api-docs"],  # admin-site access follows the role
    "user": ["chat", "usage", "keys", "api-docs"],
    "viewer": ["chat", "usage", "keys", "api-docs"],
    "api_user": ["chat", "usage", "keys", "api-docs"],
}
PAGES = ["home", "chat", "usage", "keys", "password-change"]


def page(client, user, name, **params):
    client.force_login(user)
    response = client.get(reverse(name), params)
    assert response.status_code == 200, (name, response.status_code)
    return response.content.decode()


@pytest.mark.parametrize("role", list(EXPECTED_NAV))
def test_navigation_shows_only_the_pages_the_role_may_open(client, users, role):
    html = page(client, users[role], "home")
    assert NAV.findall(html) == EXPECTED_NAV[role]
    for name in EXPECTED_NAV[role][:-1]:  # each page shown in the navigation opens
        page(client, users[role], "admin:index" if name == "admin" else name)


def test_staff_see_the_admin_link(client, users):
    admin = users["admin"]
    admin.is_staff = True
    admin.save(update_fields=["is_staff"])
    assert "admin" in NAV.findall(page(client, admin, "home"))


def test_budgets_page_refuses_non_admins_with_a_page(client, users):
    client.force_login(users["viewer"])
    response = client.get(reverse("budgets"))
    assert response.status_code == 403
    assert "text/html" in response["Content-Type"] and "can't open this page" in response.content.decode()


@pytest.mark.parametrize("name", PAGES + ["budgets", "training"])
def test_pages_carry_no_inline_script(client, users, name):
    html = page(client, users["admin"], name)
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers"


def test_chat_offers_only_the_agents_the_user_may_use(client, users, settings):
    viewer_agents = [a["name"] for a in json.loads(
        re.search(r'id="agents-data"[^>]*>(.*?)</script>', page(client, users["viewer"], "chat"), re.S).group(1))]
    assert sorted(viewer_agents) == ["general", "rag"]
    html = page(client, users["viewer"], "chat")
    assert 'id="attach"' not in html and 'id="document-form"' not in html
    html = page(client, users["user"], "chat")
    assert 'aria-label="Attach image"' in html and 'id="document-form"' in html
    # The page refuses an oversized image before sending it: it knows the server's limit.
    assert f'data-max-upload-bytes="{settings.RELAY_MAX_UPLOAD_BYTES}"' in html


def _usage_data(html):
    return json.loads(re.search(r'id="usage-data"[^>]*>(.*?)</script>', html, re.S).group(1))


def test_usage_shows_the_organization_only_with_view_metrics(client, users):
    add_usage(users["user"], 3)
    add_usage(users["viewer"], 2, agent="rag", tools=("search_documents",))
    mine = _usage_data(page(client, users["user"], "usage"))
    assert "organization" not in mine and mine["mine"]["totals"]["requests"] == 3
    assert [(t["tool"], t["calls"], t["duration_ms"]) for t in mine["mine"]["by_tool"]] == [("calculator", 3, 36)]
    viewer = _usage_data(page(client, users["viewer"], "usage"))
    assert viewer["organization"]["totals"]["requests"] == 5
    assert {row["agent"] for row in viewer["organization"]["by_agent"]} == {"math", "rag"}


def test_usage_export_link_only_with_export_data(client, users):
    export = reverse("costs-export")
    assert export in page(client, users["admin"], "usage")
    assert export not in page(client, users["viewer"], "usage")


@pytest.mark.parametrize("fixed_now", AWKWARD_MOMENTS.values(), ids=list(AWKWARD_MOMENTS), indirect=True)
def test_usage_shows_budgets_covering_the_user_with_progress(fixed_now, client, users):
    from billing.models import Budget

    add_usage(users["user"], 4, span=timedelta(minutes=30))  # $0.05, all of it this month
    Budget.objects.create(organization=users["user"].organization, scope="user", user=users["user"],
                          period="monthly", limit_usd="0.10", hard=True)
    Budget.objects.create(organization=users["user"].organization, scope="user", user=users["admin"],
                          period="monthly", limit_usd="5", hard=True)
    data = _usage_data(page(client, users["user"], "usage"))
    assert [b["target_name"] for b in data["budgets"]] == ["user user"]
    assert data["budgets"][0]["percent"] == 50.0


def test_usage_ignores_an_unknown_period(client, users):
    assert 'value="30d" selected' in page(client, users["user"], "usage", period="nonsense")


@pytest.mark.parametrize("name", PAGES + ["budgets", "training"])
def test_each_page_issues_a_bounded_number_of_queries(client, users, name, django_assert_max_num_queries):
    from billing.models import Budget

    for role in ("user", "viewer", "admin"):
        add_usage(users[role], 40)
    org = users["admin"].organization
    Budget.objects.create(organization=org, scope="organization", period="monthly", limit_usd="100")
    Budget.objects.create(organization=org, scope="user", user=users["user"], period="daily", limit_usd="1")
    client.force_login(users["admin"])
    client.get(reverse(name))  # warm caches (content types, permissions)
    with django_assert_max_num_queries(40):
        assert client.get(reverse(name)).status_code == 200
    add_usage(users["user"], 200)
    # More records and conversations do not mean more queries.
    from agents.models import Conversation

    Conversation.objects.bulk_create([Conversation(organization=org, user=users["admin"], agent="math",
                                                   title=f"c{i}") for i in range(60)])
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as before:
        client.get(reverse(name))
    add_usage(users["viewer"], 100)
    with CaptureQueriesContext(connection) as after:
        client.get(reverse(name))
    assert len(after) == len(before)


def test_password_change(client, users):
    user = users["user"]
    client.force_login(user)
    response = client.post(reverse("password-change"), {"old_password": "wrong", "new_password1": "x",
                                                       "new_password2": "y"})
    assert response.status_code == 200 and 'role="alert"' in response.content.decode()
    response = client.post(reverse("password-change"), {
        "old_password": "correct horse battery staple", "new_password1": "a much better passphrase 42",
        "new_password2": "a much better passphrase 42"})
    assert response.status_code == 302 and response["Location"] == reverse("password-change-done")
    user.refresh_from_db()
    assert user.check_password("a much better passphrase 42")


def test_keys_page_lists_own_keys_without_secrets(client, users):
    from accounts.actions.keys import create_api_key

    issued = create_api_key(users["user"], "ci deploy")
    create_api_key(users["admin"], "not mine")
    html = page(client, users["user"], "keys")
    keys = json.loads(re.search(r'id="keys-data"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert [k["name"] for k in keys] == ["ci deploy"]
    assert issued.secret not in html
    # Scopes offered are the user's own permissions.
    assert 'value="use_math_agent"' in html and 'value="manage_users"' not in html
