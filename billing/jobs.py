"""Billing's periodic jobs (Celery beat, once per cluster: relay.periodic); imported by BillingConfig.ready."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from django.utils import timezone

from billing import budgets as rules
from billing.ledger import LedgerUnavailable, get_ledger
from billing.models import Budget
from relay.periodic import register_job

logger = logging.getLogger(__name__)


@register_job("expire_reservations", lock="reservations")
def expire_reservations() -> int:
    """Free the expired reservations of every budget now, not at the next request touching it.

    A crashed instance's reservation otherwise holds budget room until another request of the
    same scope purges it; this keeps the budget pages and budget_usage_ratio honest.
    """
    now = timezone.now()
    scopes = [rules.covering(b, now).scope_key for b in Budget.objects.select_related("organization")]
    ledger = get_ledger()

    async def purge_all():
        for scope in scopes:
            await ledger.reserved(scope, now.timestamp())

    try:
        async_to_sync(purge_all)()
    except LedgerUnavailable as error:
        logger.warning("reservation expiry skipped: %s", error)
        return 0
    return len(scopes)


@register_job("evaluate_budget_alerts", lock="budget-alerts")
def evaluate_budget_alerts() -> int:
    """Raise the threshold alerts a request could not (its settle failed, a limit was lowered...).

    Alerts are unique per budget, period and threshold, so a threshold already raised is skipped.
    """
    budgets = Budget.objects.exclude(alert_thresholds=[]).select_related("organization", "team", "user", "api_key")
    count = 0
    for budget in budgets:
        rules.check_all_thresholds(budget)
        count += 1
    return count
