"""Figures for the console's usage and budgets pages, assembled from billing.stats.

Everything is aggregated in the database (a fixed number of queries per page, whatever the
number of records); budgets cost a few queries each and an organization has a handful.
"""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts import scoping
from accounts.models import APIKey, Team, User
from billing import budget_changes, stats
from billing.models import Budget, ToolUsage, UsageRecord
from billing.money import decimal_text

DEFAULT_PERIOD = "30d"
PERIOD_LABELS = {"today": "Today", "7d": "Last 7 days", "30d": "Last 30 days", "month": "This month"}


def _by_tool(records) -> list[dict]:
    rows = (ToolUsage.objects.filter(usage__in=records).values("tool")
            .annotate(calls=Count("id"), duration_ms=Sum("duration_ms"), cost=Sum("cost")).order_by("-calls", "tool"))
    return [{"tool": r["tool"], "calls": r["calls"], "duration_ms": r["duration_ms"] or 0,
             "cost": decimal_text(r["cost"])} for r in rows]


def _figures(summary: dict, records, period: str, time_zone: str) -> dict:
    start, end = stats.window(period, timezone.now(), time_zone)
    summary["by_tool"] = _by_tool(records.filter(created_at__gte=start, created_at__lte=end))
    totals = summary["totals"]
    totals["tokens"] = totals["input_tokens"] + totals["output_tokens"]
    return summary


def usage_page(user, period: str, *, with_organization: bool) -> dict:
    """The user's own figures; the organization's too when with_organization (view_metrics)."""
    organization = user.organization
    tz = organization.time_zone
    mine_records = UsageRecord.objects.filter(organization=organization, user=user)
    data = {"mine": _figures(stats.user_usage(user, period), mine_records, period, tz)}
    if with_organization:
        org_records = UsageRecord.objects.filter(organization=organization)
        data["organization"] = _figures(stats.organization_stats(organization, period), org_records, period, tz)
    forecast = stats.forecast(organization)
    if with_organization:
        budgets = forecast["budgets"]
    else:
        covering = Q(scope="organization") | Q(scope="user", user=user) | Q(scope="api_key", api_key__owner=user)
        if user.team_id:
            covering |= Q(scope="team", team_id=user.team_id)
        ids = set(Budget.objects.filter(covering, organization=organization).values_list("id", flat=True))
        budgets = [row for row in forecast["budgets"] if row["id"] in ids]
        forecast = {k: v for k, v in forecast.items() if k in ("month", "time_zone")}
    data["breakdown"] = breakdown(user, period)
    data["budgets"] = [_with_progress(row) for row in budgets]
    data["forecast"] = forecast
    return data


def breakdown(user, period: str, key=None) -> dict:
    """Spend per user and per key through the one gate: an organization's admins see every
    member and key of it, anyone else only their own (view_metrics shows totals, not people)."""
    organization = user.organization
    start, end = stats.window(period, timezone.now(), organization.time_zone)
    records = scoping.restrict(UsageRecord.objects.filter(organization=organization), user, key)
    figures = stats.breakdown(records, start=start, end=end, time_zone=organization.time_zone)
    figures["everyone"] = scoping.acts_as_admin(user, key)
    return figures


def _with_progress(row: dict) -> dict:
    limit, spent = Decimal(row["limit_usd"]), Decimal(row["spent_usd"])
    percent = float(min(Decimal(100), spent / limit * 100)) if limit else 0.0
    return {**row, "percent": round(percent, 1), "level": "over" if percent >= 100 else "high" if percent >= 80 else "ok"}


def budgets_page(organization) -> dict:
    """Budgets with this period's spend, and what a budget can be set on (teams, users, keys)."""
    rows = [_with_progress(row) for row in budget_changes.budgets_with_spend(organization)]
    targets = {
        "team": [{"id": t.pk, "name": t.name} for t in Team.objects.filter(organization=organization).order_by("name")],
        "user": [{"id": u.pk, "name": u.username} for u in
                 User.objects.filter(organization=organization, is_active=True).order_by("username").only("username")],
        "api_key": [{"id": k.pk, "name": f"{k.name} (rk_{k.prefix}…, {k.owner.username})"} for k in
                    APIKey.objects.filter(owner__organization=organization, revoked_at__isnull=True)
                    .select_related("owner").order_by("name")],
    }
    return {"budgets": rows, "targets": targets, "scopes": Budget.SCOPES, "periods": Budget.PERIODS}
