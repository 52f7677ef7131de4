"""Cost figures for the API: aggregated in the database (Sum/Count/TruncDate), never row by row."""

from __future__ import annotations

import zoneinfo
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing import budgets as rules
from billing.models import Budget, UsageRecord
from billing.money import cost_usd, decimal_text, usd_to_nanos

PERIODS = ("today", "7d", "30d", "month")
TOTALS = {"cost": Sum("cost"), "input_tokens": Sum("input_tokens"), "output_tokens": Sum("output_tokens"),
          "requests": Count("id"), "cached": Count("id", filter=Q(cached=True))}


def window(period: str, now: datetime, time_zone: str) -> tuple[datetime, datetime]:
    """[start, now] of a stats period, calendar-aligned in the organization's time zone."""
    tz = zoneinfo.ZoneInfo(time_zone)
    today = now.astimezone(tz).date()
    first = {"today": today, "7d": today - timedelta(days=6), "30d": today - timedelta(days=29),
             "month": today.replace(day=1)}.get(period)
    if first is None:
        raise ValueError(f"Unknown period {period!r}; one of {', '.join(PERIODS)}.")
    return datetime.combine(first, time(), tz), now


def _money(value) -> str:
    """Nano-dollar precision (the forecast divides), as plain decimal text."""
    return decimal_text((value or Decimal(0)).quantize(Decimal("0.000000001")))


def _row(values: dict) -> dict:
    return {"cost": _money(values["cost"]), "input_tokens": values["input_tokens"] or 0,
            "output_tokens": values["output_tokens"] or 0, "requests": values["requests"],
            "cached": values["cached"]}


def summarize(records, *, start: datetime, end: datetime, time_zone: str) -> dict:
    """Totals, by model, by agent, by status and per local day for the records in [start, end]."""
    records = records.filter(created_at__gte=start, created_at__lte=end)
    tz = zoneinfo.ZoneInfo(time_zone)
    by = {}
    for field in ("model", "agent", "status"):
        by[field] = [{field: row[field], **_row(row)}
                     for row in records.values(field).annotate(**TOTALS).order_by("-cost", field)]
    daily = [{"date": row["day"].isoformat(), **_row(row)} for row in
             records.annotate(day=TruncDate("created_at", tzinfo=tz)).values("day").annotate(**TOTALS).order_by("day")]
    return {"from": start, "to": end, "time_zone": time_zone, "totals": _row(records.aggregate(**TOTALS)),
            "by_model": by["model"], "by_agent": by["agent"], "by_status": by["status"], "daily": daily}


def organization_stats(organization, period: str, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    start, end = window(period, now, organization.time_zone)
    records = UsageRecord.objects.filter(organization=organization)
    return {"period": period, "organization": organization.name,
            **summarize(records, start=start, end=end, time_zone=organization.time_zone)}


def user_usage(user, period: str, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    tz = user.organization.time_zone
    start, end = window(period, now, tz)
    records = UsageRecord.objects.filter(organization_id=user.organization_id, user=user)
    return {"period": period, "user": {"id": user.pk, "username": user.username},
            **summarize(records, start=start, end=end, time_zone=tz)}


BREAKDOWN_ROWS = 100  # per table: the biggest spenders; `more` counts the rest


def breakdown(records, *, start: datetime, end: datetime, time_zone: str, rows: int = BREAKDOWN_ROWS) -> dict:
    """Spend per user and per API key over [start, end], biggest first.

    `records` has passed the scoping gate already (an organization's admins: every member's;
    anyone else: their own), so the tables show exactly who and which keys the caller may see.
    Usage through no key (the console, a session or a JWT) is the row whose key is None.
    """
    records = records.filter(created_at__gte=start, created_at__lte=end)
    users = records.values("user_id", "user__username").annotate(**TOTALS).order_by("-cost", "user__username")
    keys = records.values("api_key_id", "api_key__name", "api_key__prefix", "api_key__owner__username").annotate(
        **TOTALS).order_by("-cost", "api_key__name", "api_key_id")
    by_user = [{"user": {"id": r["user_id"], "username": r["user__username"]}, **_row(r)} for r in users[:rows + 1]]
    by_key = [{"key": _key(r), **_row(r)} for r in keys[:rows + 1]]
    return {"from": start, "to": end, "time_zone": time_zone,
            "by_user": by_user[:rows], "by_key": by_key[:rows],
            "more_users": max(0, users.count() - rows) if len(by_user) > rows else 0,
            "more_keys": max(0, keys.count() - rows) if len(by_key) > rows else 0}


def _key(row: dict) -> dict | None:
    if row["api_key_id"] is None:
        return None
    return {"id": row["api_key_id"], "name": row["api_key__name"], "prefix": f"rk_{row['api_key__prefix']}",
            "owner": row["api_key__owner__username"]}


def _daily_rate(records, now: datetime, tz: zoneinfo.ZoneInfo, days: int = 7) -> Decimal:
    """Average spend per day over the last `days` full-or-partial local days (today included)."""
    today = now.astimezone(tz).date()
    start = datetime.combine(today - timedelta(days=days - 1), time(), tz)
    total = records.filter(created_at__gte=start, created_at__lte=now).aggregate(t=Sum("cost"))["t"] or Decimal(0)
    return total / days


def forecast(organization, now: datetime | None = None, *, rate_days: int = 7) -> dict:
    """Month-end projection: this month so far plus the recent daily rate for the days left,
    and per budget the local date it runs out at that rate (None if it does not this period)."""
    now = now or timezone.now()
    tz = zoneinfo.ZoneInfo(organization.time_zone)
    records = UsageRecord.objects.filter(organization=organization)
    month_start, _ = window("month", now, organization.time_zone)
    month = summarize(records, start=month_start, end=now, time_zone=organization.time_zone)
    today = now.astimezone(tz).date()
    month_end = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    days_left = (month_end - today).days + 1  # today's rest counts as a day at the rate
    rate = _daily_rate(records, now, tz, rate_days)
    so_far = Decimal(month["totals"]["cost"])
    budgets = [_budget_forecast(b, now, today, rate_days) for b in Budget.objects.filter(
        organization=organization).select_related("organization", "team", "user", "api_key")]
    return {
        "month": f"{today.year}-{today.month:02d}", "time_zone": organization.time_zone,
        "month_to_date_usd": _money(so_far), "daily_rate_usd": _money(rate), "rate_days": rate_days,
        "days_left": days_left, "projected_month_end_usd": _money(so_far + rate * (days_left - 1)
                                                                    + rate * _rest_of_today(now, tz)),
        "daily": month["daily"], "budgets": budgets,
    }


def _rest_of_today(now: datetime, tz) -> Decimal:
    local = now.astimezone(tz)
    seconds_left = 86400 - (local.hour * 3600 + local.minute * 60 + local.second)
    return Decimal(seconds_left) / 86400


def _budget_forecast(budget: Budget, now: datetime, today: date, rate_days: int) -> dict:
    item = rules.covering(budget, now)
    tz = zoneinfo.ZoneInfo(item.time_zone)
    spent = rules.spent_in_period(budget, now)
    limit = usd_to_nanos(budget.limit_usd)
    rate = usd_to_nanos(_daily_rate(rules.records_in_scope(budget), now, tz, rate_days))
    resets = rules.periods.resets_at(budget.period, now, item.time_zone)
    runs_out = None
    if spent >= limit:
        runs_out = today
    elif rate > 0:
        day = today + timedelta(days=(limit - spent) // rate)  # the day spend at this rate passes the limit
        if resets is None or day < resets.astimezone(tz).date():
            runs_out = day
    return {"id": budget.pk, "scope": budget.scope, "target_name": rules.target_name(budget),
            "period": budget.period, "period_key": item.period_key, "limit_usd": decimal_text(budget.limit_usd),
            "spent_usd": decimal_text(cost_usd(spent)), "daily_rate_usd": decimal_text(cost_usd(rate)),
            "runs_out_on": runs_out.isoformat() if runs_out else None,
            "resets_at": resets}


EXPORT_COLUMNS = ["created_at", "request_id", "user__username", "team__name", "api_key__prefix", "agent", "model",
                  "price_id", "input_tokens", "output_tokens", "cost", "cached", "status", "complete", "latency_ms",
                  "message_id"]


def export_rows(organization, start: datetime | None, end: datetime | None):
    """Tuples of the organization's usage records, oldest first, streamed in chunks."""
    records = UsageRecord.objects.filter(organization=organization)
    if start:
        records = records.filter(created_at__gte=start)
    if end:
        records = records.filter(created_at__lt=end)
    return records.order_by("created_at", "id").values_list(*EXPORT_COLUMNS).iterator(chunk_size=2000)
