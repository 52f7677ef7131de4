"""Reading the trail: the filters of the API and exports.

Who may see which events is not audit's to say (it sits below accounts): the views pass the
trail through the scoping gate (accounts.scoping) first.
"""

import datetime as dt

from django.core.exceptions import ValidationError

# Longest since..until window one query may ask for; a year covers any audit period.
MAX_RANGE = dt.timedelta(days=366)
DEFAULT_EXPORT_RANGE = dt.timedelta(days=31)


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
