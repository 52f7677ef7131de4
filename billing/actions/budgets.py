"""Budgets: set through the API (created, or updated for the same target and period), saved and
deleted in the admin; an alert deleted there. Each audited in its own transaction.

An organization holds at most RELAY_MAX_BUDGETS_PER_ORGANIZATION budgets: each is a series of
budget_usage_ratio, and the export is bounded (billing/metrics.py), so no organization may fill
it. A new budget past the cap is refused (400 on the API, a form error in the admin); budgets
already held are still updated.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from audit import actions
from billing.budget_changes import budget_changed, resolve_target, target_id
from billing.ledger import LedgerUnavailable
from billing.models import Budget, BudgetAlert
from billing.money import decimal_text
from billing.services import record_budget_event


def budget_room_problem(organization_id) -> str | None:
    """Why `organization_id` may not get one more budget (None: it may). Call it with the
    organization's row locked (check_budget_room) when the answer decides a write."""
    cap = settings.RELAY_MAX_BUDGETS_PER_ORGANIZATION
    if Budget.objects.filter(organization_id=organization_id).count() < cap:
        return None
    return (f"An organization holds at most {cap} budgets (RELAY_MAX_BUDGETS_PER_ORGANIZATION): "
            "change or delete one of its budgets instead.")


def check_budget_room(organization_id) -> None:
    """Refuse a new budget past the cap. Locks the organization's row until the transaction ends,
    so concurrent creations in one organization are counted one after the other."""
    list(Organization.objects.select_for_update().filter(pk=organization_id).values_list("pk", flat=True))
    problem = budget_room_problem(organization_id)
    if problem:
        raise ValidationError(problem, code="too_many_budgets")


def set_budget(*, actor, organization, scope: str, target, period: str, limit_usd, hard: bool,
               alert_thresholds: list[int], now=None) -> tuple[Budget, bool]:
    """Create the budget, or update the one already set for this target and period.

    The counter of the current period is recomputed from UsageRecord inside the transaction: a
    changed limit never works from stale spend, and if the ledger is down nothing is written.
    """
    now = now or timezone.now()
    target_fields = resolve_target(organization, scope, target)
    with transaction.atomic():  # the audit event shares the transaction: both or neither
        lookup = {"organization": organization, "scope": scope, "period": period, **target_fields}
        budget = Budget.objects.select_for_update().filter(**lookup).first()
        created = budget is None
        if created:
            check_budget_room(organization.pk)
            budget = Budget(created_by=actor, **lookup)
        budget.limit_usd, budget.hard, budget.alert_thresholds = limit_usd, hard, alert_thresholds
        budget.full_clean()
        budget.save()
        budget_changed(budget, now=now)
        record_budget_event(actions.BUDGET_CREATED if created else actions.BUDGET_UPDATED, actor=actor,
                            organization_id=organization.pk,
                            metadata={"budget_id": budget.pk, "scope": scope, "target": target, "period": period,
                                      "limit_usd": decimal_text(budget.limit_usd), "hard": hard,
                                      "alert_thresholds": alert_thresholds})
    return budget, created


def _metadata(budget: Budget) -> dict:
    return {"budget_id": budget.pk, "scope": budget.scope, "target": target_id(budget), "period": budget.period,
            "limit_usd": decimal_text(budget.limit_usd), "hard": budget.hard, "alert_thresholds": budget.alert_thresholds}


@transaction.atomic
def save_budget(budget: Budget, *, actor, now=None) -> bool:
    """A budget as edited in the admin (its form has validated it, the cap included; checked again
    here under the organization's lock). False: saved, but the ledger was unreachable, so its
    counter waits for `manage.py rebuild_ledger`."""
    created = budget.pk is None
    if created:
        budget.created_by = actor
    if created or not Budget.objects.filter(pk=budget.pk, organization_id=budget.organization_id).exists():
        check_budget_room(budget.organization_id)  # a new budget, or one moved to another organization
    budget.save()
    try:
        with transaction.atomic():
            budget_changed(budget, now=now)  # period or limit changed: recompute the counter from records
        counted = True
    except LedgerUnavailable:
        counted = False
    record_budget_event(actions.BUDGET_CREATED if created else actions.BUDGET_UPDATED, actor=actor,
                        organization_id=budget.organization_id, metadata=_metadata(budget))
    return counted


@transaction.atomic
def delete_budget(budget: Budget, *, actor) -> None:
    metadata = _metadata(budget)
    budget.delete()
    record_budget_event(actions.BUDGET_DELETED, actor=actor, organization_id=budget.organization_id,
                        metadata=metadata)


@transaction.atomic
def delete_budget_alert(alert: BudgetAlert, *, actor) -> None:
    """An alert row goes (its threshold may fire again this period)."""
    metadata = {"budget_id": alert.budget_id, "alert_id": alert.pk, "period_key": alert.period_key,
                "threshold": alert.threshold}
    organization_id = Budget.objects.filter(pk=alert.budget_id).values_list("organization_id", flat=True).first()
    alert.delete()
    record_budget_event(actions.BUDGET_ALERT_DELETED, actor=actor, organization_id=organization_id,
                        metadata=metadata)
