"""The cost API: budgets (bad input, other organizations), stats/usage/forecast against raw records."""

import csv
import io
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.actions.keys import create_api_key
from billing.models import Budget, ModelPrice, UsageRecord
from tests.billing.conftest import make_budget
from tests.conftest import AWKWARD_MOMENTS, assert_envelope

pytestmark = pytest.mark.django_db
BUDGET = reverse("costs-budget")


def body(**overrides):
    return {"scope": "organization", "period": "monthly", "limit_usd": "10.00", "hard": True,
            "alert_thresholds": [50, 80, 100], **overrides}


def add_usage(user, *, cost, days_ago=0, model="gpt-4o", agent="math", status="complete", key=None, n=0):
    price = ModelPrice.objects.filter(model=model).first()
    return UsageRecord.objects.create(
        organization=user.organization, team=user.team, user=user, api_key=key, agent=agent, model=model, price=price,
        input_tokens=10, output_tokens=5, cost=Decimal(cost), status=status, complete=status == "complete",
        request_id=f"r-{user.pk}-{days_ago}-{cost}-{model}-{n}", created_at=timezone.now() - timedelta(days=days_ago))


def test_admin_sets_and_updates_a_budget(users, client_for):
    admin = client_for(users["admin"])
    key = create_api_key(users["user"], "k").key
    created = admin.post(BUDGET, body(scope="api_key", target=key.pk), format="json")
    assert created.status_code == 201, created.content
    assert created.json()["limit_usd"] == "10" and created.json()["target"] == key.pk
    updated = admin.post(BUDGET, body(scope="api_key", target=key.pk, limit_usd=25, hard=False), format="json")
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    assert Budget.objects.get().limit_usd == Decimal(25) and not Budget.objects.get().hard
    listed = client_for(users["viewer"]).get(BUDGET).json()["results"]
    assert [row["id"] for row in listed] == [created.json()["id"]]


@pytest.mark.parametrize("changes, field", [
    ({"limit_usd": "-1"}, "limit_usd"),
    ({"limit_usd": "0"}, "limit_usd"),
    ({"limit_usd": 0}, "limit_usd"),
    ({"limit_usd": "NaN"}, "limit_usd"),
    ({"limit_usd": "Infinity"}, "limit_usd"),
    ({"limit_usd": "-Infinity"}, "limit_usd"),
    ({"limit_usd": "1000000001"}, "limit_usd"),
    ({"limit_usd": "1e12"}, "limit_usd"),
    ({"limit_usd": "ten"}, "limit_usd"),
    ({"limit_usd": ""}, "limit_usd"),
    ({"limit_usd": True}, "limit_usd"),
    ({"limit_usd": None}, "limit_usd"),
    ({"limit_usd": [1]}, "limit_usd"),
    ({"limit_usd": "0.00000000000000000001"}, "limit_usd"),
    ({"scope": "galaxy"}, "scope"),
    ({"period": "hourly"}, "period"),
    ({"alert_thresholds": [0]}, "alert_thresholds"),
    ({"alert_thresholds": [101]}, "alert_thresholds"),
    ({"alert_thresholds": [50, 50]}, "alert_thresholds"),
    ({"alert_thresholds": "50"}, "alert_thresholds"),
    ({"hard": "maybe"}, "hard"),
    ({"scope": "team"}, "target"),
    ({"scope": "team", "target": 999999}, "target"),
    ({"scope": "user", "target": "me"}, "target"),
    ({"target": 999999}, "target"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_budget_input_is_a_clear_400_and_writes_nothing(users, client_for, changes, field):
    response = client_for(users["admin"]).post(BUDGET, body(**changes), format="json")
    error = assert_envelope(response, 400, "invalid")
    assert field in error["fields"], error
    assert not Budget.objects.exists()


def test_targets_in_another_organization_are_refused(users, other_users, client_for):
    admin = client_for(users["admin"])
    foreign_key = create_api_key(other_users["user"], "theirs").key
    for scope, target in (("team", other_users["user"].team_id), ("user", other_users["user"].pk),
                          ("api_key", foreign_key.pk), ("organization", other_users["user"].organization_id)):
        response = admin.post(BUDGET, body(scope=scope, target=target), format="json")
        assert_envelope(response, 400, "invalid")
    assert not Budget.objects.exists()


def test_only_admins_set_budgets(users, client_for):
    for role in ("user", "viewer", "api_user"):
        assert_envelope(client_for(users[role]).post(BUDGET, body(), format="json"), 403, "permission_denied")
    assert not Budget.objects.exists()


@pytest.mark.parametrize("fixed_now", AWKWARD_MOMENTS.values(), ids=list(AWKWARD_MOMENTS), indirect=True)
def test_stats_agree_with_raw_records(fixed_now, users, other_users, client_for):
    spend = [("0.5", 0, "gpt-4o", "math"), ("0.25", 0, "gpt-4o-mini", "code"), ("1.125", 3, "gpt-4o", "rag"),
             ("2", 20, "gpt-4o", "math"), ("7", 45, "gpt-4o", "math")]
    for n, (cost, days, model, agent) in enumerate(spend):
        add_usage(users["user"], cost=cost, days_ago=days, model=model, agent=agent, n=n)
    add_usage(other_users["user"], cost="100")  # another organization never shows
    viewer = client_for(users["viewer"])
    expected = {"today": "0.75", "7d": "1.875", "30d": "3.875"}
    for period, total in expected.items():
        data = viewer.get(reverse("costs-stats"), {"period": period}).json()
        assert Decimal(data["totals"]["cost"]) == Decimal(total), (period, data["totals"])
        assert sum(Decimal(row["cost"]) for row in data["by_model"]) == Decimal(total)
        assert sum(Decimal(row["cost"]) for row in data["daily"]) == Decimal(total)
        assert data["totals"]["requests"] == sum(row["requests"] for row in data["by_agent"])
    month = viewer.get(reverse("costs-stats"), {"period": "month"}).json()
    raw = sum(r.cost for r in UsageRecord.objects.filter(organization=users["user"].organization,
                                                         created_at__gte=month["from"]))
    assert Decimal(month["totals"]["cost"]) == raw
    assert_envelope(viewer.get(reverse("costs-stats"), {"period": "year"}), 400, "invalid")


def test_usage_is_own_or_needs_view_metrics_and_never_crosses_organizations(users, other_users, client_for):
    add_usage(users["user"], cost="0.5")
    url = reverse("costs-usage", args=[users["user"].pk])
    mine = client_for(users["user"]).get(url)
    assert mine.status_code == 200 and mine.json()["totals"]["cost"] == "0.5"
    assert client_for(users["viewer"]).get(url).status_code == 200
    assert client_for(users["admin"]).get(url).status_code == 200
    assert_envelope(client_for(users["api_user"]).get(url), 403, "permission_denied")
    assert_envelope(client_for(other_users["admin"]).get(url), 404, "not_found")


@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize("fixed_now", AWKWARD_MOMENTS.values(), ids=list(AWKWARD_MOMENTS), indirect=True)
def test_forecast_projects_the_month_and_budget_exhaustion(fixed_now, users, client_for, time_zone):
    org = users["user"].organization
    org.time_zone = time_zone  # Berlin: the month turns an hour earlier, and one day has 23 hours
    org.save(update_fields=["time_zone"])
    for day in range(7):
        add_usage(users["user"], cost="1", days_ago=day, n=day)
    budget = make_budget(org, scope="organization", period="total", limit_usd="100")
    data = client_for(users["viewer"]).get(reverse("costs-forecast")).json()
    assert Decimal(data["daily_rate_usd"]) == 1
    so_far = Decimal(data["month_to_date_usd"])
    local = fixed_now.astimezone(ZoneInfo(time_zone))
    this_month = sum(f"{(fixed_now - timedelta(days=day)).astimezone(local.tzinfo):%Y-%m}" == f"{local:%Y-%m}"
                     for day in range(7))
    assert data["month"] == f"{local:%Y-%m}" and so_far == this_month  # $1 a day, this month's days only
    assert Decimal(data["projected_month_end_usd"]) > so_far
    (row,) = data["budgets"]
    assert row["id"] == budget.pk and Decimal(row["spent_usd"]) == 7
    assert row["runs_out_on"] == (local.date() + timedelta(days=93)).isoformat()  # $93 left at $1/day


def test_export_streams_csv_of_the_organization_only(users, other_users, client_for):
    add_usage(users["user"], cost="0.5")
    add_usage(other_users["user"], cost="9")
    response = client_for(users["admin"]).get(reverse("costs-export"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][0] == "created_at" and len(rows) == 2 and rows[1][2] == "user"
    assert rows[1][rows[0].index("cost")] == "0.5"  # plain decimal text, as in the JSON API
    assert_envelope(client_for(users["viewer"]).get(reverse("costs-export")), 403, "permission_denied")


def test_budget_changes_are_audited(users, client_for):
    from audit.models import AuditEvent

    admin = client_for(users["admin"])
    admin.post(BUDGET, body(), format="json")
    admin.post(BUDGET, body(limit_usd="20"), format="json")
    events = list(AuditEvent.objects.filter(action__startswith="budget.").order_by("sequence")
                  .values_list("action", "metadata"))
    assert [action for action, _ in events] == ["budget.created", "budget.updated"]
    assert Decimal(events[1][1]["limit_usd"]) == 20
