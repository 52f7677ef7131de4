"""Billing's metrics: budget_usage_ratio, and the priced models as `model` label values.

budget_usage_ratio: how much of each budget's current period is spent, read at scrape time.

Budget limits live in the database, not in the processes that spend them, so this gauge is
computed when Prometheus scrapes (one query for the budgets and one per budget for its spend,
cached for CACHE_SECONDS so that a tight scrape interval or several scrapers stay cheap). Series
are per budget id: budgets are created by admins, so their number is bounded by configuration.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from billing import budgets as rules
from billing.models import Budget, ModelPrice
from billing.money import usd_to_nanos

logger = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
MAX_BUDGETS = 500  # far beyond what one deployment configures; keeps a scrape bounded anyway

_cache: dict = {"at": float("-inf"), "rows": []}
_lock = threading.Lock()


def _usage_rows() -> list[tuple[str, str, str, str, float]]:
    now = timezone.now()
    rows = []
    for budget in Budget.objects.select_related("organization").order_by("pk")[:MAX_BUDGETS]:
        limit = usd_to_nanos(budget.limit_usd)
        spent = rules.spent_in_period(budget, now)
        ratio = spent / limit if limit > 0 else 0.0
        rows.append((str(budget.pk), budget.scope, budget.period, "hard" if budget.hard else "soft", ratio))
    return rows


class BudgetUsageCollector:
    def collect(self):
        with _lock:
            if time.monotonic() - _cache["at"] > CACHE_SECONDS:
                try:
                    _cache["rows"] = _usage_rows()
                except DatabaseError:  # the rest of the scrape still works without the database
                    logger.warning("metrics: cannot read budgets", exc_info=True)
                    _cache["rows"] = []
                _cache["at"] = time.monotonic()
            rows = _cache["rows"]
        family = GaugeMetricFamily(
            "budget_usage_ratio", "Share of each budget's current period already spent (1 = used up).",
            labels=["budget_id", "scope", "period", "kind"])
        for budget_id, scope, period, kind, ratio in rows:
            family.add_metric([budget_id, scope, period, kind], ratio)
        yield family


def priced_models():
    """Every model with a price: a `model` label value (relay.observability.metrics.known_models)."""
    return ModelPrice.objects.values_list("model", flat=True).distinct()


def register() -> None:
    """Called by BillingConfig.ready: relay/observability imports no app, billing tells it."""
    from relay.observability import metrics

    metrics.register_label_values("model", priced_models)
    metrics.register_collector(BudgetUsageCollector())
