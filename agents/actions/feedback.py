"""A user's rating of an answer, which moves its quality score."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts import scoping
from accounts.models import User
from agents.models import Message
from audit import actions
from audit.services import record

RATINGS = (1, -1)


@transaction.atomic
def record_feedback(user: User, message_id, rating: int) -> Message:
    """Rate one of `user`'s own answers; Message.DoesNotExist for any other message (someone else's too)."""
    if rating not in RATINGS:
        raise ValidationError({"rating": [f"A rating is one of {RATINGS}."]})
    message = scoping.restrict(Message.objects.select_for_update().select_related("conversation"), user).get(
        pk=message_id, role=Message.Role.ASSISTANT)
    base = message.quality_auto if message.quality_auto is not None else 0.5
    previous = message.feedback
    # Feedback moves the automatic score a quarter of the scale, within [0, 1].
    message.feedback = rating
    message.quality_score = min(1.0, max(0.0, base + 0.25 * rating))
    message.save(update_fields=["feedback", "quality_score"])
    record(actions.FEEDBACK_RECORDED, actor=user, organization=message.conversation.organization_id,
           resource=f"message:{message.pk}",
           metadata={"rating": rating, "previous": previous, "quality_score": message.quality_score})
    return message
