"""Reading the trail: who may see which events, and the filters of the API and exports."""

import datetime as dt

from django.core.exceptions import ValidationError

from audit.models import AuditEvent

# Longest since..until window one query may ask for; a year covers any audit period.
MAX_RANGE = dt.timedelta(days=366)
DEFAULT_EXPORT_RANGE = dt.timedelta(days=31)


def visible_events(user):
    """An organization's events for its admins; every event for superusers; nothing otherwise.

    By the hashed reference, not the pointer: the pointer is outside the hash, so repointing it
    by SQL must not hand an event to another organization (verify_audit names such an event).
    """
    events = AuditEvent.objects.all()
    if user.is_superuser:
        return events
    if user.organization_id is None:
        return events.none()
    return events.filter(organization_ref=user.organization_id)


def check_range(since, until, *, default_span=None, now=None, cap=True):
    """(since, until) validated: ordered and (if capped) at most MAX_RANGE apart; a missing end filled if asked."""
    if default_span is not None:
        until = until or (now or dt.datetime.now(dt.UTC))
        since = since or until - default_span
    if since and until and since > until:
        raise ValidationError({"since": "since must not be after until."})
    if cap and since and until and until - since > MAX_RANGE:
        raise ValidationError({"until": f"The range is longer than {MAX_RANGE.days} days; ask for less at a time."})
    return since, until


def filter_events(events, *, actor=None, action=None, status=None, resource=None, since=None, until=None):
    if actor:
        events = events.filter(actor_name=actor)
    if action:
        events = events.filter(action=action)
    if status:
        events = events.filter(status=status)
    if resource:
        events = events.filter(resource=resource)
    if since:
        events = events.filter(time__gte=since)
    if until:
        events = events.filter(time__lt=until)
    return events
