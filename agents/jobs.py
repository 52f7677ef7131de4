"""The agents' periodic jobs (Celery beat, once per cluster: relay.periodic); imported by AgentsConfig.ready."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from agents.actions.recovery import interrupt_message
from agents.models import Message
from relay.periodic import register_job

logger = logging.getLogger(__name__)


@register_job("mark_interrupted_messages", lock="interrupted")
def mark_interrupted_messages(older_than_seconds: int | None = None) -> int:
    """Answers still `running` long after any run could last belong to a dead instance.

    No live instance runs longer than the budget reservation TTL (settings say: keep the TTL
    above the longest run), so a message running for longer was orphaned by a crash (SIGKILL,
    OOM, lost host). It becomes `interrupted`, gets its zero-cost usage record and its audit
    event; its reservation needs nothing: the ledger frees it when its TTL passes.
    Returns how many messages were marked.
    """
    bound = settings.RELAY_INTERRUPTED_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    stale = list(stale_running_messages(bound)[:500])
    marked = sum(1 for message in stale if interrupt_message(message))
    if marked:
        logger.warning("marked %d message(s) of dead instances interrupted", marked)
    return marked


def stale_running_messages(older_than_seconds: float, now: dt.datetime | None = None):
    """Answers still `running` that started more than `older_than_seconds` before `now`, oldest first."""
    cutoff = (now or timezone.now()) - dt.timedelta(seconds=older_than_seconds)
    return (Message.objects.filter(status=Message.Status.RUNNING, created_at__lt=cutoff)
            .select_related("conversation").order_by("created_at"))


@register_job("prune_idempotency_keys")
def prune_idempotency_keys() -> int:
    """Idempotency keys live 24 hours (agents/idempotency.py); drop the expired ones."""
    from agents.idempotency import prune

    return prune()
