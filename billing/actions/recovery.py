"""Billing's part of closing an answer orphaned by a crash (agents.actions.recovery owns the transaction)."""

from __future__ import annotations

import logging

from django.utils import timezone

from billing.models import UsageRecord
from billing.pricing import UnknownModel, current_price

logger = logging.getLogger(__name__)


def record_interrupted_usage(*, request_id: str, client_request_id, organization_id, user, agent: str, model: str,
                             message_id, created_at) -> None:
    """The request's one usage record, at zero cost (nothing was settled, so nothing is charged).

    Runs inside the caller's transaction, which writes the run's audit event after it.
    """
    if not request_id or UsageRecord.objects.filter(request_id=request_id).exists():
        return
    try:
        price = current_price(model, timezone.now())  # zero cost: any current price will do
    except UnknownModel:
        logger.warning("interrupted message %s: no price for %r, no usage record", message_id, model)
        return
    UsageRecord.objects.create(
        request_id=request_id, client_request_id=client_request_id, organization_id=organization_id,
        team_id=user.team_id, user=user, agent=agent, model=price.model, price=price, status="interrupted",
        complete=False, message_id=message_id, created_at=created_at)
