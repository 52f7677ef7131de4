"""Recovery from dead instances: an answer its process left `running` is closed by the periodic job or `reconcile`.

If the ledger holds the run's closing record (the process settled and answered, then died before
its closing transaction committed), that closing is written exactly: the usage record with the
real tokens and cost, the stored answer, the `agent.run` event marked `recovered_by`. The ledger
was settled then and is not charged again. Otherwise the run died mid-answer: it is closed as
`interrupted` at zero cost (nothing was settled).
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.db import transaction

from agents.actions.runs import recover_closing
from agents.models import Message
from audit import actions
from audit.services import record
from billing.actions.recovery import record_interrupted_usage
from billing.ledger import get_ledger


def held_closings(messages) -> dict:
    """The closing records the ledger holds for these answers' runs, by run id (one ledger trip)."""
    held = async_to_sync(get_ledger().held_closings)([m.request_id for m in messages if m.request_id])
    return {request_id: found.closing for request_id, found in held.items()}


def recover_message(message, *, by: str = "periodic", closing: str | None = None) -> str | None:
    """Close one answer its process left running: "recovered" (its held `closing` written),
    "interrupted", or None if it was closed meanwhile. The ledger then forgets the record."""
    if closing is not None:
        outcome = "recovered" if recover_closing(closing, by=by) else None
        async_to_sync(get_ledger().forget_closings)([message.request_id])
        return outcome
    return "interrupted" if interrupt_message(message, by=by) else None


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
