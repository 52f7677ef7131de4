"""A deleted conversation withdraws every built version that holds it.

Connected to Conversation's pre_delete in training's AppConfig.ready (agents cannot import
training), so it runs inside the deletion's transaction, whichever path deleted it: the
conversation.deleted event of that deletion covers the withdrawal, and a deletion that rolls
back withdraws nothing. Future builds cannot include it: its rows are gone; nor can evaluation
sets made from those versions keep it.
"""

from __future__ import annotations

from django.utils import timezone

from training.models import DatasetVersion, VersionConversation
from training.models_evaluation import EvaluationItem, EvaluationSet


def withdraw_deleted_conversation(sender, instance, **kwargs) -> None:
    holding = VersionConversation.objects.filter(conversation_id=instance.pk).values("version_id")
    DatasetVersion.objects.filter(pk__in=holding, withdrawn_at__isnull=True).update(
        withdrawn_at=timezone.now(), withdrawn_reason=f"Conversation {instance.pk} was deleted.")
    _forget_copied_items(instance)


def _forget_copied_items(conversation) -> None:
    """Evaluation sets made from a version copied its questions and answers (an item's id is the
    answer's): the deleted conversation's items go, with their results, even when the version is gone."""
    answers = [str(pk) for pk in conversation.messages.values_list("pk", flat=True)]
    items = EvaluationItem.objects.filter(evaluation_set__source=EvaluationSet.Source.DATASET,
                                          evaluation_set__organization_id=conversation.organization_id,
                                          external_id__in=answers)
    sets = set(items.values_list("evaluation_set_id", flat=True))
    if not sets:
        return
    items.delete()
    for evaluation_set in EvaluationSet.objects.filter(pk__in=sets):
        evaluation_set.items_count = evaluation_set.items.count()
        evaluation_set.references_count = evaluation_set.items.exclude(reference="").count()
        evaluation_set.save(update_fields=["items_count", "references_count"])
