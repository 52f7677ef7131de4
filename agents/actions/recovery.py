"""Recovery from dead instances: an answer orphaned by a crash is closed as `interrupted`."""

from __future__ import annotations

from django.db import transaction

from agents.models import Message
from audit import actions
from audit.services import record
from billing.actions.recovery import record_interrupted_usage


def interrupt_message(message, *, by: str = "periodic") -> bool:
    """Mark one orphaned answer `interrupted` with its zero-cost usage record and its audit event
    (`by` names who found it: the periodic job or `manage.py reconcile`). False if it finished meanwhile."""
    with transaction.atomic():
        # Conditional: an instance that was merely slow and finishes now keeps its own outcome.
        if not Message.objects.filter(pk=message.pk, status=Message.Status.RUNNING).update(
                status=Message.Status.INTERRUPTED, error_code="interrupted"):
            return False
        conversation = message.conversation
        record_interrupted_usage(
            request_id=message.request_id, client_request_id=message.client_request_id,
            organization_id=conversation.organization_id, user=conversation.user, agent=message.agent,
            model=message.model, message_id=message.pk, created_at=message.created_at)
        record(actions.AGENT_RUN, status=actions.ERROR, actor=conversation.user,
               organization=conversation.organization_id, resource=f"message:{message.pk}",
               metadata={"agent": message.agent, "model": message.model, "status": "interrupted",
                         "cost": "0", "input_tokens": 0, "output_tokens": 0, "run_id": message.request_id,
                         "interrupted_by": by})
    return True
