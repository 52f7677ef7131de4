"""Periodic work of the cluster, run by Celery beat (settings.CELERY_BEAT_SCHEDULE).

Beat runs once per cluster, but a second beat started by mistake (or a task retried while the
first run is still going) must not double the work: each task takes a django-redis lock first
and skips its turn when another process holds it. In the embedded mode the cache is in-process
and the lock is a plain one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading

from asgiref.sync import async_to_sync
from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)
_local_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def single_writer(name: str, timeout: int = 300):
    """Yields True when this process holds the cluster-wide lock `name`, False when another does."""
    if hasattr(cache, "lock"):  # django-redis
        lock = cache.lock(f"periodic:{name}", timeout=timeout)
    else:
        lock = _local_locks.setdefault(name, threading.Lock())
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            with contextlib.suppress(Exception):  # an expired Redis lock is gone already
                lock.release()


@shared_task(name="relay.mark_interrupted_messages", ignore_result=True)
def mark_interrupted_messages(older_than_seconds: int | None = None) -> int:
    """Answers still `running` long after any run could last belong to a dead instance.

    No live instance runs longer than the budget reservation TTL (settings say: keep the TTL
    above the longest run), so a message running for longer was orphaned by a crash (SIGKILL,
    OOM, lost host). It becomes `interrupted`, gets its zero-cost usage record and its audit
    event; its reservation needs nothing: the ledger frees it when its TTL passes.
    Returns how many messages were marked.
    """
    bound = settings.RELAY_INTERRUPTED_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    with single_writer("interrupted") as mine:
        if not mine:
            return 0
        stale = list(stale_running_messages(bound)[:500])
        marked = sum(1 for message in stale if interrupt_message(message))
    if marked:
        logger.warning("marked %d message(s) of dead instances interrupted", marked)
    return marked


def stale_running_messages(older_than_seconds: float, now: dt.datetime | None = None):
    """Answers still `running` that started more than `older_than_seconds` before `now`, oldest first."""
    from agents.models import Message

    cutoff = (now or timezone.now()) - dt.timedelta(seconds=older_than_seconds)
    return (Message.objects.filter(status=Message.Status.RUNNING, created_at__lt=cutoff)
            .select_related("conversation").order_by("created_at"))


def interrupt_message(message, *, by: str = "periodic") -> bool:
    """Mark one orphaned answer `interrupted` with its zero-cost usage record and its audit event
    (`by` names who found it: this job or `manage.py reconcile`). False if it finished meanwhile."""
    from agents.models import Message
    from audit import actions
    from audit.services import record

    with transaction.atomic():
        # Conditional: an instance that was merely slow and finishes now keeps its own outcome.
        if not Message.objects.filter(pk=message.pk, status=Message.Status.RUNNING).update(
                status=Message.Status.INTERRUPTED, error_code="interrupted"):
            return False
        conversation = message.conversation
        _record_zero_usage(message, conversation)
        record(actions.AGENT_RUN, status=actions.ERROR, actor=conversation.user,
               organization=conversation.organization_id, resource=f"message:{message.pk}",
               metadata={"agent": message.agent, "model": message.model, "status": "interrupted",
                         "cost": "0", "input_tokens": 0, "output_tokens": 0, "run_id": message.request_id,
                         "interrupted_by": by})
    return True


def _record_zero_usage(message, conversation) -> None:
    """The request's one usage record (nothing was settled, so nothing is charged)."""
    from billing.models import UsageRecord
    from billing.pricing import UnknownModel, current_price

    if not message.request_id or UsageRecord.objects.filter(request_id=message.request_id).exists():
        return
    try:
        price = current_price(message.model, timezone.now())  # zero cost: any current price will do
    except UnknownModel:
        logger.warning("interrupted message %s: no price for %r, no usage record", message.pk, message.model)
        return
    user = conversation.user
    UsageRecord.objects.create(
        request_id=message.request_id, client_request_id=message.client_request_id,
        organization_id=conversation.organization_id, team_id=user.team_id,
        user=user, agent=message.agent, model=price.model, price=price, status="interrupted",
        complete=False, message_id=message.pk, created_at=message.created_at)


@shared_task(name="relay.prune_idempotency_keys", ignore_result=True)
def prune_idempotency_keys() -> int:
    """Idempotency keys live 24 hours (agents/idempotency.py); drop the expired ones."""
    from agents.idempotency import prune

    return prune()


@shared_task(name="relay.expire_reservations", ignore_result=True)
def expire_reservations() -> int:
    """Free the expired reservations of every budget now, not at the next request touching it.

    A crashed instance's reservation otherwise holds budget room until another request of the
    same scope purges it; this keeps the budget pages and budget_usage_ratio honest.
    """
    from billing import budgets as rules
    from billing.ledger import LedgerUnavailable, get_ledger
    from billing.models import Budget

    with single_writer("reservations") as mine:
        if not mine:
            return 0
        now = timezone.now()
        scopes = [rules.covering(b, now).scope_key for b in Budget.objects.select_related("organization")]
        ledger = get_ledger()

        async def purge_all():
            for scope in scopes:
                await ledger.reserved(scope, now.timestamp())

        try:
            async_to_sync(purge_all)()
        except LedgerUnavailable as error:
            logger.warning("reservation expiry skipped: %s", error)
            return 0
    return len(scopes)


@shared_task(name="relay.evaluate_budget_alerts", ignore_result=True)
def evaluate_budget_alerts() -> int:
    """Raise the threshold alerts a request could not (its settle failed, a limit was lowered...).

    Alerts are unique per budget, period and threshold, so a threshold already raised is skipped.
    """
    from billing.budgets import check_all_thresholds
    from billing.models import Budget

    with single_writer("budget-alerts") as mine:
        if not mine:
            return 0
        budgets = Budget.objects.exclude(alert_thresholds=[]).select_related("organization", "team", "user",
                                                                               "api_key")
        count = 0
        for budget in budgets:
            check_all_thresholds(budget)
            count += 1
    return count


@shared_task(name="relay.audit_checkpoint", ignore_result=True)
def audit_checkpoint() -> dict:
    """Verify the audit chain; past RELAY_AUDIT_RETENTION_DAYS, prune behind a signed checkpoint."""
    from audit.maintenance import prune, verify_chain

    with single_writer("audit", timeout=3600) as mine:
        if not mine:
            return {"skipped": True}
        verdict = verify_chain()
        if not verdict.ok:
            logger.error("audit chain verification FAILED: %s", verdict.message)
            return {"ok": False, "message": verdict.message}
        days = settings.RELAY_AUDIT_RETENTION_DAYS
        checkpoint = prune(timezone.now() - dt.timedelta(days=days)) if days else None
    return {"ok": True, "pruned": checkpoint.pruned_count if checkpoint else 0}


@shared_task(name="relay.audit_head_checkpoint", ignore_result=True)
def audit_head_checkpoint() -> dict:
    """Sign the audit chain head (every RELAY_AUDIT_CHECKPOINT_SECONDS): from then on, verify_audit
    fails if any event up to it is deleted; only the events since the latest one are unprotected."""
    from audit.maintenance import write_head_checkpoint

    # Its own lock: the daily verification (`audit`) may hold its lock for long on a big trail.
    with single_writer("audit-head", timeout=60) as mine:
        if not mine:
            return {"skipped": True}
        checkpoint = write_head_checkpoint()
    return {"sequence": checkpoint.sequence if checkpoint else 0}
