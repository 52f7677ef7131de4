"""Background work for budgets: tell someone a threshold was crossed."""

import json
import logging
import urllib.request

from celery import shared_task
from django.conf import settings

from billing.money import decimal_text

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=5, default_retry_delay=30, ignore_result=True)
def notify_budget_alert(self, alert_id: int) -> None:
    """Log the alert and POST it as JSON to RELAY_BUDGET_WEBHOOK_URL when that is set."""
    from billing.models import BudgetAlert

    alert = BudgetAlert.objects.select_related("budget__organization", "budget__team", "budget__user",
                                               "budget__api_key").filter(pk=alert_id).first()
    if alert is None:
        return
    budget = alert.budget
    payload = {
        "type": "budget.alert", "alert_id": alert.pk, "organization": budget.organization.name,
        "budget_id": budget.pk, "scope": budget.scope, "target": budget.target_name(), "period": budget.period,
        "period_key": alert.period_key, "threshold": alert.threshold, "spent_usd": decimal_text(alert.spent_usd),
        "limit_usd": decimal_text(budget.limit_usd), "hard": budget.hard,
    }
    logger.warning("budget alert: %s reached %s%% ($%s of $%s) in %s", payload["target"], alert.threshold,
                   payload["spent_usd"], payload["limit_usd"], alert.period_key)
    url = settings.RELAY_BUDGET_WEBHOOK_URL
    if not url:
        return
    if not url.startswith(("https://", "http://")):
        logger.error("RELAY_BUDGET_WEBHOOK_URL must be an http(s) URL; alert %s not sent", alert.pk)
        return
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",  # noqa: S310 (scheme checked)
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (scheme checked)
            response.read(1024)
    except OSError as error:
        logger.warning("budget webhook failed (%s); retrying", error)
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            raise self.retry(exc=error)
