"""Calendar-aligned budget periods in the organization's time zone.

The period key is part of the ledger scope key, so a new period starts at zero without any
reset job, and a request stays in the period it was reserved in.
"""

import zoneinfo
from datetime import date, datetime, time, timedelta


def _local(now: datetime, time_zone: str) -> datetime:
    return now.astimezone(zoneinfo.ZoneInfo(time_zone or "UTC"))


def period_start_date(period: str, day: date) -> date | None:
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == "monthly":
        return day.replace(day=1)
    if period == "total":
        return None
    raise ValueError(f"Unknown period {period!r}.")


def next_start_date(period: str, start: date) -> date | None:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    if period == "monthly":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return None


def period_key(period: str, now: datetime, time_zone: str) -> str:
    """e.g. 2026-11-26 (daily), 2026-W48 (weekly), 2026-11 (monthly), total."""
    day = _local(now, time_zone).date()
    if period == "daily":
        return day.isoformat()
    if period == "weekly":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "monthly":
        return f"{day.year}-{day.month:02d}"
    if period == "total":
        return "total"
    raise ValueError(f"Unknown period {period!r}.")


def period_bounds(period: str, now: datetime, time_zone: str) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the period containing `now`, as aware datetimes; (None, None) for total."""
    tz = zoneinfo.ZoneInfo(time_zone or "UTC")
    start = period_start_date(period, _local(now, time_zone).date())
    if start is None:
        return None, None
    end = next_start_date(period, start)
    return datetime.combine(start, time(), tz), datetime.combine(end, time(), tz)


def resets_at(period: str, now: datetime, time_zone: str) -> datetime | None:
    return period_bounds(period, now, time_zone)[1]
