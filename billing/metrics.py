"""Billing's metrics: budget_usage_ratio, and the priced models as `model` label values.

budget_usage_ratio: how much of each budget's current period is spent, read at scrape time.

Budget limits live in the database, not in the processes that spend them, so this gauge is
computed when Prometheus scrapes (one query for the budgets and one per budget for its spend,
cached for CACHE_SECONDS so that a tight scrape interval or several scrapers stay cheap). Series
are per budget id: budgets are created by organization admins, at most
RELAY_MAX_BUDGETS_PER_ORGANIZATION each (billing.actions.budgets), and a scrape exports at most
MAX_BUDGETS of them, taken in turns across organizations (every organization's first budget,
then every second, ...), so one organization's budgets never push another's out of the alerts.
budget_usage_truncated is 1 when budgets were left out.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import DatabaseError
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from billing import budgets as rules
from billing.models import Budget, ModelPrice
from billing.money import usd_to_nanos

logger = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
MAX_BUDGETS = 500  # far beyond what one deployment configures; keeps a scrape bounded anyway

_cache: dict = {"at": float("-inf"), "rows": [], "truncated": False}
_lock = threading.Lock()


def _exported_budgets() -> tuple[list[Budget], bool]:
    """At most MAX_BUDGETS budgets, in turns across organizations (each organization's oldest
    first), and whether any were left out."""
    turn = Window(RowNumber(), partition_by=[F("organization_id")], order_by=F("pk").asc())
    budgets = list(Budget.objects.select_related("organization").annotate(turn=turn)
                   .order_by("turn", "organization_id", "pk")[:MAX_BUDGETS + 1])
    return budgets[:MAX_BUDGETS], len(budgets) > MAX_BUDGETS


def _usage_rows() -> tuple[list[tuple[str, str, str, str, float]], bool]:
    now = timezone.now()
    rows = []
    budgets, truncated = _exported_budgets()
    for budget in budgets:
        limit = usd_to_nanos(budget.limit_usd)
        spent = rules.spent_in_period(budget, now)
        ratio = spent / limit if limit > 0 else 0.0
        rows.append((str(budget.pk), budget.scope, budget.period, "hard" if budget.hard else "soft", ratio))
    return rows, truncated


class BudgetUsageCollector:
    def collect(self):
        with _lock:
            if time.monotonic() - _cache["at"] > CACHE_SECONDS:
                try:
                    _cache["rows"], _cache["truncated"] = _usage_rows()
                except DatabaseError:  # the rest of the scrape still works without the database
                    logger.warning("metrics: cannot read budgets", exc_info=True)
                    _cache["rows"], _cache["truncated"] = [], False
                _cache["at"] = time.monotonic()
            rows, truncated = _cache["rows"], _cache["truncated"]
        family = GaugeMetricFamily(
            "budget_usage_ratio", "Share of each budget's current period already spent (1 = used up).",
            labels=["budget_id", "scope", "period", "kind"])
        for budget_id, scope, period, kind, ratio in rows:
            family.add_metric([budget_id, scope, period, kind], ratio)
        yield family
        yield GaugeMetricFamily(
            "budget_usage_truncated", f"1 when budget_usage_ratio leaves budgets out (more than {MAX_BUDGETS}).",
            value=1 if truncated else 0)


def priced_models():
    """Every model with a price: a `model` label value (relay.observability.metrics.known_models)."""
    return ModelPrice.objects.values_list("model", flat=True).distinct()


def register() -> None:
    """Called by BillingConfig.ready: relay/observability imports no app, billing tells it."""
    from relay.observability import metrics

    metrics.register_label_values("model", priced_models)
    metrics.register_collector(BudgetUsageCollector())
