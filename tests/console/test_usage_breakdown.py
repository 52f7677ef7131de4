"""Usage for admins: spend per user and per key, through the one gate, on the page and in the API;
and money on the usage, budgets and admin pages shown by the one rule."""

import json
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.actions.keys import create_api_key
from tests.console.conftest import add_usage

pytestmark = pytest.mark.django_db


def _breakdown(client, user):
    client.force_login(user)
    html = client.get(reverse("usage"), {"period": "7d"}).content.decode()
    data = json.loads(re.search(r'id="usage-data"[^>]*>(.*?)</script>', html, re.S).group(1))
    return data["breakdown"], html


@pytest.fixture
def spend(users, other_users):
    """user: $0.03 through a key + $0.0125 in the console; viewer $0.0004 through a key; another org $5."""
    user_key = create_api_key(users["user"], "user-ci-key").key
    viewer_key = create_api_key(users["viewer"], "viewer-notebook-key").key
    add_usage(users["user"], 2, key=user_key, cost="0.015")
    add_usage(users["user"], 1)
    add_usage(users["viewer"], 1, key=viewer_key, cost="0.0004")
    add_usage(other_users["admin"], 1, key=create_api_key(other_users["admin"], "globex-key").key, cost="5")
    return {"user": user_key, "viewer": viewer_key}


def test_an_organization_admin_sees_every_member_and_key(client, users, spend):
    figures, html = _breakdown(client, users["admin"])
    assert figures["everyone"] is True
    assert [(r["user"]["username"], r["requests"], r["cost"]) for r in figures["by_user"]] == [
        ("user", 3, "0.0425"), ("viewer", 1, "0.0004")]
    by_key = {(r["key"] or {}).get("name"): (r["requests"], r["cost"]) for r in figures["by_key"]}
    assert by_key == {"user-ci-key": (2, "0.03"), None: (1, "0.0125"), "viewer-notebook-key": (1, "0.0004")}
    assert figures["by_key"][0]["key"]["owner"] == "user"
    assert 'id="usage-by-user"' in html and 'id="usage-by-key"' in html
    assert "globex-key" not in html  # another organization's key
    assert "$0.0004" in html and "$0.04" in html  # the one display rule, not $0.00


@pytest.mark.parametrize("role", ["user", "viewer"])
def test_members_see_only_their_own_even_with_view_metrics(client, users, spend, role):
    figures, html = _breakdown(client, users[role])
    assert figures["everyone"] is False
    assert [r["user"]["username"] for r in figures["by_user"]] == [role]
    assert {(r["key"] or {}).get("owner", role) for r in figures["by_key"]} == {role}
    other = "viewer" if role == "user" else "user"
    assert f'data-user="{other}"' not in html and spend[other].name not in html and spend[other].prefix not in html


def test_the_cost_api_gives_the_same_breakdown_through_the_gate(users, other_users, spend, client_for):
    url = reverse("costs-breakdown")
    admin = client_for(users["admin"]).get(url, {"period": "7d"}).json()
    assert {r["user"]["username"]: r["cost"] for r in admin["by_user"]} == {"user": "0.0425", "viewer": "0.0004"}
    assert {(r["key"] or {}).get("prefix") for r in admin["by_key"]} == {
        f"rk_{spend['user'].prefix}", f"rk_{spend['viewer'].prefix}", None}
    # A member, through one of their own keys: their own rows only.
    mine = client_for(users["viewer"], via="api_key").get(url, {"period": "7d"}).json()
    assert [r["user"]["username"] for r in mine["by_user"]] == ["viewer"]
    theirs = client_for(other_users["admin"]).get(url, {"period": "7d"}).json()
    assert [r["cost"] for r in theirs["by_user"]] == ["5"]
    bad = client_for(users["admin"]).get(url, {"period": "year"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"


def test_the_tables_are_capped_and_say_how_many_more(users):
    from billing import stats
    from billing.models import UsageRecord

    for role in ("user", "viewer", "api_user"):
        add_usage(users[role], 1)
    start, end = stats.window("7d", timezone.now(), "UTC")
    records = UsageRecord.objects.filter(organization=users["user"].organization)
    figures = stats.breakdown(records, start=start, end=end, time_zone="UTC", rows=2)
    assert len(figures["by_user"]) == 2 and figures["more_users"] == 1
    assert len(figures["by_key"]) == 1 and figures["more_keys"] == 0


def test_money_on_the_usage_and_budgets_pages_follows_the_one_rule(client, users):
    from billing.models import Budget

    add_usage(users["user"], 1, cost="0.0004")
    Budget.objects.create(organization=users["user"].organization, scope="user", user=users["user"],
                          period="monthly", limit_usd="2.5")
    for name, role in (("usage", "user"), ("budgets", "admin")):  # every amount on them is $0.0004 or $2.50
        client.force_login(users[role])
        html = client.get(reverse(name)).content.decode()
        text = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)  # the data islands are machine text
        assert "$0.0004" in text and "$2.50" in text, name
        assert "$0.00<" not in text and "$0.00 " not in text and "E-" not in text, name
        data = re.findall(r'<script[^>]*type="application/json"[^>]*>(.*?)</script>', html, re.S)
        assert data and not any(re.search(r'"[-\d.]+E[-+]?\d+"|\d\.\d*0000000"', d) for d in data), name


def test_admin_money_forms_and_lists_show_no_trailing_zeros(client, users):
    from billing.models import Budget, ModelPrice

    admin = users["admin"]
    admin.is_staff = admin.is_superuser = True
    admin.save(update_fields=["is_staff", "is_superuser"])
    budget = Budget.objects.create(organization=admin.organization, scope="organization", period="monthly",
                                   limit_usd=Decimal("12.5"))
    price = ModelPrice.objects.create(model="priced", input_per_1k=Decimal("0.00015"), output_per_1k=Decimal("0"))
    client.force_login(admin)
    form = client.get(reverse("admin:billing_budget_change", args=[budget.pk])).content.decode()
    assert re.search(r'name="limit_usd"[^>]*value="12.5"', form), re.findall(r'<input[^>]*limit_usd[^>]*>', form)
    form = client.get(reverse("admin:billing_modelprice_change", args=[price.pk])).content.decode()
    assert re.search(r'name="input_per_1k"[^>]*value="0.00015"', form)
    assert re.search(r'name="output_per_1k"[^>]*value="0"', form)
    listing = client.get(reverse("admin:billing_budget_changelist")).content.decode()
    assert "$12.50" in listing and "12.5000000000" not in listing
    listing = client.get(reverse("admin:billing_modelprice_changelist")).content.decode()
    assert "$0.00015" in listing and "0.0001500000" not in listing
