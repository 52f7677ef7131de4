"""No organization crowds the others out of the budget alerts.

budget_usage_ratio exports a bounded number of budgets (billing.metrics.MAX_BUDGETS) for the
whole cluster. Controls: billing.actions.budgets.check_budget_room (at most
RELAY_MAX_BUDGETS_PER_ORGANIZATION budgets per organization, on the API and in the admin), and
billing.metrics._exported_budgets (budgets taken in turns across organizations, and
budget_usage_truncated saying when some were left out).
"""

import pytest
from django.urls import reverse
from prometheus_client import CollectorRegistry, generate_latest

from audit.models import AuditEvent
from billing import metrics
from billing.models import Budget
from tests.billing.conftest import make_budget
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db
BUDGET = reverse("costs-budget")
CAP = 3


@pytest.fixture
def cap(settings):
    settings.RELAY_MAX_BUDGETS_PER_ORGANIZATION = CAP
    return CAP


def body(period, **overrides):
    return {"scope": "organization", "period": period, "limit_usd": "10", "hard": True, **overrides}


def test_an_organization_holds_at_most_the_cap_of_budgets_and_others_still_create(cap, users, other_users,
                                                                                   client_for):
    # Control: billing.actions.budgets.check_budget_room, called by set_budget for a new budget.
    admin = client_for(users["admin"])
    for period in ("daily", "weekly", "monthly"):
        assert admin.post(BUDGET, body(period), format="json").status_code == 201
    refused = assert_envelope(admin.post(BUDGET, body("total"), format="json"), 400, "invalid")
    assert "RELAY_MAX_BUDGETS_PER_ORGANIZATION" in refused["message"] and str(cap) in refused["message"], refused
    organization = users["admin"].organization
    assert Budget.objects.filter(organization=organization).count() == cap
    assert AuditEvent.objects.filter(action="budget.created", organization=organization).count() == cap

    updated = admin.post(BUDGET, body("monthly", limit_usd="20"), format="json")  # a budget it holds: still set
    assert updated.status_code == 200 and updated.json()["limit_usd"] == "20", updated.content
    other = client_for(other_users["admin"])
    assert other.post(BUDGET, body("total"), format="json").status_code == 201


def test_the_admin_refuses_a_budget_past_the_cap(cap, users, client):
    # Control: billing.admin.BudgetForm (budget_room_problem) and save_budget's check_budget_room.
    organization = users["admin"].organization
    for period in ("daily", "weekly", "monthly"):
        make_budget(organization, period=period)
    client.force_login(users["admin"])
    answer = client.post(reverse("admin:billing_budget_add"), {
        "organization": organization.pk, "scope": "organization", "period": "total", "limit_usd": "5",
        "hard": "on", "alert_thresholds": "[80]"})
    assert answer.status_code == 200, answer.status_code
    assert "RELAY_MAX_BUDGETS_PER_ORGANIZATION" in str(answer.context["adminform"].form.non_field_errors())
    assert Budget.objects.filter(organization=organization).count() == cap


def _scrape() -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics.BudgetUsageCollector())
    metrics._cache["at"] = float("-inf")  # no copy from another test
    series = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def test_an_organization_at_its_cap_does_not_hide_another_organizations_budget(cap, org, other_org, monkeypatch):
    # Control: billing.metrics._exported_budgets (turns across organizations, budget_usage_truncated).
    monkeypatch.setattr(metrics, "MAX_BUDGETS", cap)  # org's budgets alone fill the export
    first = [make_budget(org, period=period) for period in ("daily", "weekly", "monthly")]
    late = make_budget(other_org, period="monthly")  # created after every one of them
    exported = _scrape()
    ids = {name.split('budget_id="')[1].split('"')[0] for name in exported if name.startswith("budget_usage_ratio{")}
    assert str(late.pk) in ids and len(ids) == cap, exported
    assert {str(first[0].pk), str(first[1].pk)} <= ids  # each organization's oldest first
    assert exported["budget_usage_truncated"] == 1

    monkeypatch.setattr(metrics, "MAX_BUDGETS", 10)
    exported = _scrape()
    assert exported["budget_usage_truncated"] == 0
    assert sum(name.startswith("budget_usage_ratio{") for name in exported) == cap + 1
