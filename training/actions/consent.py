"""Consent to train on an organization's interactions, and a user's exclusion of a conversation."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, User
from agents.models import Conversation
from audit import actions
from audit.services import record
from training.actions.withdrawal import delete_runs_of_copies
from training.models import ConversationExclusion, TrainingConsent


@transaction.atomic
def set_consent(organization: Organization, *, enabled: bool, actor: User | None) -> TrainingConsent:
    """The caller has checked that actor administers the organization (the view requires ADMIN)."""
    consent, _ = TrainingConsent.objects.select_for_update().get_or_create(organization=organization)
    previous = consent.enabled
    consent.enabled, consent.changed_by, consent.changed_at = enabled, actor, timezone.now()
    consent.save()
    record(actions.TRAINING_CONSENT_CHANGED, actor=actor, organization=organization.pk,
           resource=f"organization:{organization.pk}", metadata={"enabled": enabled, "previous": previous})
    return consent


@transaction.atomic
def exclude_conversation(conversation: Conversation, *, actor: User | None,
                         reason: str = ConversationExclusion.Reason.USER) -> ConversationExclusion:
    """Idempotent: excluding an excluded conversation keeps the first exclusion (and records again).

    Its owner's exclusion also deletes the evaluation runs that asked questions copied from it
    (each audited as conversation.deleted): otherwise they hold its words outside its exclusion.
    """
    exclusion, _ = ConversationExclusion.objects.get_or_create(
        conversation=conversation, defaults={"reason": reason, "excluded_by": actor})
    if reason == ConversationExclusion.Reason.USER:
        delete_runs_of_copies(conversation, actor=actor)
    record(actions.TRAINING_CONVERSATION_EXCLUDED, actor=actor, organization=conversation.organization_id,
           resource=f"conversation:{conversation.pk}", metadata={"reason": exclusion.reason})
    return exclusion


@transaction.atomic
def include_conversation(conversation: Conversation, *, actor: User | None) -> None:
    """The owner lifts their exclusion; an evaluation's run stays excluded (ValueError)."""
    exclusion = ConversationExclusion.objects.select_for_update().filter(conversation=conversation).first()
    if exclusion is not None and exclusion.reason != ConversationExclusion.Reason.USER:
        raise ValueError("An evaluation's conversation stays out of training data.")
    if exclusion is not None:
        exclusion.delete()
    record(actions.TRAINING_CONVERSATION_INCLUDED, actor=actor, organization=conversation.organization_id,
           resource=f"conversation:{conversation.pk}", metadata={"was_excluded": exclusion is not None})
