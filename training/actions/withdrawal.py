"""A deleted conversation withdraws every built version that holds it.

Connected to Conversation's pre_delete in training's AppConfig.ready (agents cannot import
training), so it runs inside the deletion's transaction, whichever path deleted it: the
conversation.deleted event of that deletion covers the withdrawal, and a deletion that rolls
back withdraws nothing. Future builds cannot include it: its rows are gone.
"""

from __future__ import annotations

from django.utils import timezone

from training.models import DatasetVersion, VersionConversation


def withdraw_deleted_conversation(sender, instance, **kwargs) -> None:
    holding = VersionConversation.objects.filter(conversation_id=instance.pk).values("version_id")
    DatasetVersion.objects.filter(pk__in=holding, withdrawn_at__isnull=True).update(
        withdrawn_at=timezone.now(), withdrawn_reason=f"Conversation {instance.pk} was deleted.")
