"""Budgets: which ones cover a request, their ledger scopes, thresholds, and rebuilding counters."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from audit import actions
from audit.services import record
from billing import periods
from billing.models import Budget, BudgetAlert, UsageRecord
from billing.money import cost_usd, decimal_text, format_usd, usd_to_nanos
from billing.rule_cache import RULES
from billing.tasks import notify_budget_alert

logger = logging.getLogger(__name__)
# Soft budgets ride along in the same reservation (their counters feed the alerts) with a limit
# that never binds: the largest integer a Lua double holds exactly.
UNBOUNDED_NANOS = 2**53 - 1


@dataclass
class Covering:
    """A budget covering a request, in the period the request is reserved in."""

    budget: Budget
    time_zone: str
    period_key: str

    @property
    def scope_key(self) -> str:
        return f"{self.budget.ledger_id}:{self.period_key}"

    @property
    def limit_nanos(self) -> int:
        return usd_to_nanos(self.budget.limit_usd) if self.budget.hard else UNBOUNDED_NANOS


def covering(budget: Budget, now: datetime) -> Covering:
    tz = budget.organization.time_zone
    return Covering(budget, tz, periods.period_key(budget.period, now, tz))


def covering_budgets(user, api_key, now: datetime, rules=None) -> list[Covering]:
    """Every budget over the request: the organization's, the user's team's, the user's, the key's
    and those of every key above it (a key minted through a key stays under that key's budgets).

    rules: a billing.rule_cache view (the rows are read once per change, not once per request).
    """
    if user.organization_id is None:
        return []
    key_id = api_key.pk if api_key is not None else None

    def load() -> list[Budget]:
        from accounts.key_tree import chain

        targets = Q(scope="organization") | Q(scope="user", user_id=user.pk)
        if user.team_id:
            targets |= Q(scope="team", team_id=user.team_id)
        if key_id is not None:
            # A key's ancestors never change, so the key's id still names this set in the cache.
            targets |= Q(scope="api_key", api_key_id__in=[key.pk for key in chain(api_key)])
        return list(Budget.objects.filter(targets, organization_id=user.organization_id).select_related(
            "organization", "team", "user", "api_key"))

    found = (rules or RULES.view()).get(("budgets", user.organization_id, user.pk, user.team_id, key_id), load)
    return [covering(budget, now) for budget in found]


def target_name(budget: Budget) -> str:
    return budget.target_name()


def hard_key_budgets(key_ids: list[int]) -> set[int]:
    """The keys among `key_ids` a hard key budget binds (accounts.key_tree.budgeted asks)."""
    return set(Budget.objects.filter(scope="api_key", hard=True, api_key_id__in=key_ids)
               .values_list("api_key_id", flat=True))


def exceeded_details(item: Covering, spent_nanos: int, now: datetime) -> dict:
    """Keyword arguments of services.BudgetExceeded for this budget."""
    budget = item.budget
    resets = periods.resets_at(budget.period, now, item.time_zone)
    when = f"; it resets on {resets.date().isoformat()}" if resets else "; it does not reset"
    period = "total" if budget.period == "total" else budget.period
    return {
        "scope": budget.scope, "budget_id": budget.pk, "limit_usd": budget.limit_usd,
        "spent_usd": cost_usd(spent_nanos), "resets_at": resets,
        "message": f"The {period} budget of {target_name(budget)} ({format_usd(budget.limit_usd)}) is used up{when}.",
    }


def records_in_scope(budget: Budget):
    """The usage a budget counts: a key's budget also counts the keys minted through it."""
    records = UsageRecord.objects.filter(organization_id=budget.organization_id)
    if budget.scope == "organization":
        return records
    if budget.scope == "api_key":
        from accounts.key_tree import subtree_ids

        return records.filter(api_key_id__in=subtree_ids(budget.api_key_id))
    field = f"{budget.scope}_id"
    return records.filter(**{field: getattr(budget, field)})


def spent_in_period(budget: Budget, now: datetime) -> int:
    """Nano-dollars recorded against the budget in the period containing `now` (one aggregate query)."""
    records = records_in_scope(budget)
    start, end = periods.period_bounds(budget.period, now, budget.organization.time_zone)
    if start is not None:
        records = records.filter(created_at__gte=start, created_at__lt=end)
    total = records.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    return usd_to_nanos(total)


def evaluate_thresholds(budget_ids: list[int], spent: dict[str, int], actual: int, when: datetime | None) -> None:
    """Raise an alert for each threshold this request's spend crossed (once per period: the
    unique constraint drops a second one from a concurrent request)."""
    when = when or timezone.now()
    for budget in Budget.objects.filter(pk__in=budget_ids).exclude(alert_thresholds=[]).select_related(
            "organization", "team", "user", "api_key"):
        item = covering(budget, when)
        after = spent.get(item.scope_key)
        if after is None:
            continue
        for threshold in crossed_thresholds(budget.alert_thresholds, usd_to_nanos(budget.limit_usd), after, actual):
            raise_alert(item, threshold, after)


def crossed_thresholds(thresholds, limit_nanos: int, after: int, actual: int) -> list[int]:
    """The thresholds (percent) a spend of `actual` took the counter across, ending at `after`."""
    # In integers: spent * 100 >= limit * threshold.
    return [t for t in sorted(thresholds) if (after - actual) * 100 < limit_nanos * t <= after * 100]


def raise_alert(item: Covering, threshold: int, spent_nanos: int) -> BudgetAlert | None:
    budget = item.budget
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(budget=budget, period_key=item.period_key, threshold=threshold,
                                               spent_usd=cost_usd(spent_nanos))
    except IntegrityError:
        return None  # already raised this period
    metadata = {"budget_id": budget.pk, "scope": budget.scope, "period": budget.period,
                "period_key": item.period_key, "threshold": threshold, "spent_usd": decimal_text(alert.spent_usd),
                "limit_usd": decimal_text(budget.limit_usd)}
    # audit/actions.py has no alert name yet; this one follows its `<subject>.<verb>` scheme.
    record_budget_event(getattr(actions, "BUDGET_ALERT", "budget.alert"), organization_id=budget.organization_id,
                        metadata=metadata)
    transaction.on_commit(lambda: notify_budget_alert.delay(alert.pk))
    return alert


def record_budget_event(action: str, *, organization_id: int | None, metadata: dict, actor=None,
                        status: str = "success") -> None:
    """Write a budget event to the audit trail (audit.services.record, names from audit/actions.py)."""
    record(action, status=status, resource=f"budget:{metadata.get('budget_id', '')}", metadata=metadata,
           actor=actor, organization=organization_id)


def check_all_thresholds(budget: Budget, now: datetime | None = None) -> None:
    """After a budget changes: raise every threshold already passed in the current period."""
    now = now or timezone.now()
    item = covering(budget, now)
    spent = spent_in_period(budget, now)
    limit = usd_to_nanos(budget.limit_usd)
    for threshold in budget.alert_thresholds or []:
        if spent * 100 >= limit * threshold:
            raise_alert(item, threshold, spent)


def rebuild_budget(budget: Budget, now: datetime | None = None) -> tuple[str, int]:
    """Reset the ledger's spent counter of the budget's current period from UsageRecord.

    Sync (admin, API, management command): the sum is read on the caller's connection, so it
    sees the caller's own transaction. The counter also holds what the records do not yet: runs
    settled whose closing has not committed (the ledger's held closing records, answered a
    moment ago) and settles made while this reads. Read in this order, a run that commits
    meanwhile may be counted twice until the next rebuild (more spent, never less: a hard limit
    still holds); it is never left out.
    """
    from asgiref.sync import async_to_sync

    from billing.ledger import get_ledger

    ledger = get_ledger()
    now = now or timezone.now()
    item = covering(budget, now)
    since = async_to_sync(ledger.spent)(item.scope_key)
    held = [found for found in async_to_sync(ledger.held_closings)().values() if item.scope_key in found.scopes]
    written = set(UsageRecord.objects.filter(request_id__in=[found.request_id for found in held])
                  .values_list("request_id", flat=True)) if held else set()
    spent = spent_in_period(budget, now) + sum(found.charged_nanos for found in held if found.request_id not in written)
    async_to_sync(ledger.rebuild)(item.scope_key, spent, since=since)
    return item.scope_key, spent
