"""Budgets: set through the API (created, or updated for the same target and period), saved and
deleted in the admin; an alert deleted there. Each audited in its own transaction."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audit import actions
from billing.budget_changes import budget_changed, resolve_target, target_id
from billing.ledger import LedgerUnavailable
from billing.models import Budget, BudgetAlert
from billing.money import decimal_text
from billing.services import record_budget_event


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
    """A budget as edited in the admin (its form has validated it). False: saved, but the ledger was
    unreachable, so its counter waits for `manage.py rebuild_ledger`."""
    created = budget.pk is None
    if created:
        budget.created_by = actor
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
