"""The agents' periodic jobs (Celery beat, once per cluster: relay.periodic); imported by AgentsConfig.ready."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from agents.actions.recovery import held_closings, recover_message
from agents.models import Message
from relay.periodic import register_job

logger = logging.getLogger(__name__)


@register_job("mark_interrupted_messages", lock="interrupted")
def mark_interrupted_messages(older_than_seconds: int | None = None) -> int:
    """Answers still `running` long after any run could last belong to a dead instance.

    No live instance runs longer than the budget reservation TTL (settings say: keep the TTL
    above the longest run), so a message running for longer was orphaned by a crash (SIGKILL,
    OOM, lost host). If the ledger holds its closing record (it died after answering, before
    its commit), that closing is written as it would have been; otherwise it becomes
    `interrupted`, with its zero-cost usage record and its audit event, and its reservation
    needs nothing: the ledger frees it when its TTL passes (agents.actions.recovery).
    Returns how many messages were closed.
    """
    bound = settings.RELAY_INTERRUPTED_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    stale = list(stale_running_messages(bound)[:500])
    held = held_closings(stale)
    outcomes = [_recovered(message, held.get(message.request_id)) for message in stale]
    recovered, interrupted = outcomes.count("recovered"), outcomes.count("interrupted")
    if recovered or interrupted:
        logger.warning("closed %d answer(s) of dead instances: %d from their closing records, %d interrupted",
                       recovered + interrupted, recovered, interrupted)
    return recovered + interrupted


def _recovered(message: Message, closing) -> str | None:
    """One answer's recovery; one that fails is logged and left for the next pass, so it cannot keep
    the answers after it (oldest first) from theirs."""
    try:
        return recover_message(message, closing=closing)
    except Exception:
        logger.exception("could not close answer %s of a dead instance; it is tried again next pass", message.pk)
        return None


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
