"""Which conversations their owners' lists show (the chat sidebar, GET /api/v1/conversations/).

A higher app may keep conversations it made for its own work out of those lists (training's
evaluation runs): it registers a filter here in its AppConfig.ready, as agents cannot import it.
The conversations stay readable by id through the scoping gate; they are only not listed.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet

_UNLISTED: dict[str, Callable[[QuerySet], QuerySet]] = {}


def register_unlisted(name: str, narrow: Callable[[QuerySet], QuerySet]) -> None:
    """narrow(conversations) returns the conversations without the ones `name` keeps unlisted."""
    _UNLISTED[name] = narrow


def listed(conversations: QuerySet) -> QuerySet:
    for narrow in _UNLISTED.values():
        conversations = narrow(conversations)
    return conversations
