"""Rules and reads of budgets: whose target a budget may name, the counter after a change, the list
with current spend. Setting, changing and deleting a budget are billing/actions/budgets.py."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts import scoping
from accounts.models import APIKey, Team, User
from billing import budgets as rules
from billing.ledger import get_ledger
from billing.models import Budget
from billing.money import cost_usd, decimal_text, usd_to_nanos

TARGET_FIELD = {"team": "team", "user": "user", "api_key": "api_key"}


def resolve_target(organization, scope: str, target) -> dict:
    """The target's FK for the budget, only inside the caller's organization (else a 400 naming it)."""
    if scope == "organization":
        if target not in (None, organization.pk):
            raise ValidationError({"target": "An organization budget applies to your own organization; "
                                             "leave target empty."})
        return {}
    if target is None:
        raise ValidationError({"target": f"A {scope} budget needs the id of the {scope.replace('_', ' ')}."})
    found = {
        "team": lambda: Team.objects.filter(organization=organization, pk=target).first(),
        "user": lambda: User.objects.filter(organization=organization, pk=target).first(),
        "api_key": lambda: APIKey.objects.filter(owner__organization=organization, pk=target).first(),
    }[scope]()
    if found is None:
        _record_foreign_target(scope, target)
        raise ValidationError({"target": f"No {scope.replace('_', ' ')} {target} in your organization."})
    return {TARGET_FIELD[scope]: found}


def _record_foreign_target(scope: str, target) -> None:
    """A target that exists in another organization: same 400 (nothing leaks), but audited as denied."""
    model = {"team": Team, "user": User, "api_key": APIKey}[scope]
    scoping.refuse_hidden(model, target, resource=f"{scope}:{target}", metadata={"operation": "set_budget"})



def budget_changed(budget: Budget, now=None) -> None:
    """After a save (API or admin): fresh counter for the current period, thresholds re-checked."""
    budget.refresh_from_db(fields=["created_at"])
    rules.rebuild_budget(budget, now)
    rules.check_all_thresholds(budget, now)


def budgets_with_spend(organization, now=None) -> list[dict]:
    """The organization's budgets with this period's spend (recorded, from the database) and
    what is reserved right now (from the ledger)."""
    now = now or timezone.now()
    budgets = list(Budget.objects.filter(organization=organization).select_related(
        "organization", "team", "user", "api_key"))
    items = [rules.covering(b, now) for b in budgets]
    reserved = async_to_sync(_reserved)([item.scope_key for item in items], now.timestamp())
    rows = []
    for item in items:
        budget = item.budget
        spent = rules.spent_in_period(budget, now)
        limit = usd_to_nanos(budget.limit_usd)
        rows.append({
            "id": budget.pk, "scope": budget.scope, "target": target_id(budget), "target_name": rules.target_name(budget),
            "period": budget.period, "period_key": item.period_key, "limit_usd": decimal_text(budget.limit_usd),
            "hard": budget.hard, "alert_thresholds": budget.alert_thresholds, "spent_usd": decimal_text(cost_usd(spent)),
            "reserved_usd": decimal_text(cost_usd(reserved.get(item.scope_key, 0))),
            "remaining_usd": decimal_text(cost_usd(max(0, limit - spent))),
            "resets_at": rules.periods.resets_at(budget.period, now, item.time_zone),
            "created_at": budget.created_at, "updated_at": budget.updated_at,
        })
    return rows


def target_id(budget: Budget):
    return {"organization": budget.organization_id, "team": budget.team_id, "user": budget.user_id,
            "api_key": budget.api_key_id}[budget.scope]


async def _reserved(scope_keys: list[str], now: float) -> dict[str, int]:
    ledger = get_ledger()
    return {key: await ledger.reserved(key, now) for key in scope_keys}
