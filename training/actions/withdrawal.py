"""A deleted conversation (or message) withdraws every built version that holds it, and its copies go.

Connected to Conversation's and Message's pre_delete in training's AppConfig.ready (agents cannot
import training), so it runs inside the deletion's transaction, whichever path deleted it: the
conversation.deleted (message.deleted) event of that deletion covers the withdrawal, and a
deletion that rolls back withdraws nothing. Future builds cannot include it: its rows are gone.

Nor may copies of it outlive it. Evaluation sets made from those versions copied its questions
and answers (items), and every evaluation of such a set asked the question again in a run
conversation of its own: the items go, and so do those runs, each deleted through
agents.actions.conversations.delete_conversation (audited, and withdrawing the versions that hold
it in turn). An owner who excludes a conversation from training gets its runs deleted too
(`delete_runs_of_copies`): they hold the owner's question, outside the owner's exclusion.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from agents.actions.conversations import delete_conversation
from agents.models import Conversation, Message
from training.models import EVALUATION_RUNS, DatasetVersion, VersionConversation
from training.models_evaluation import EvaluationItem, EvaluationResult, EvaluationSet


def withdraw_deleted_conversation(sender, instance, **kwargs) -> None:
    _withdraw_versions(instance.pk, f"Conversation {instance.pk} was deleted.")
    answers = [str(pk) for pk in instance.messages.values_list("pk", flat=True)]
    _forget_copied_items(instance.organization_id, answers)


def withdraw_deleted_message(sender, instance, origin=None, **kwargs) -> None:
    """A message deleted on its own (the admin): its conversation's versions go, and the items copied
    from it and from the answers to it (an item is a question and its answer, named by the answer)."""
    if _conversation_deletion(origin):
        return  # its conversation goes with it: withdraw_deleted_conversation covers it, once
    organization_id = Conversation.objects.filter(pk=instance.conversation_id).values_list(
        "organization_id", flat=True).first()
    _withdraw_versions(instance.conversation_id,
                       f"A message of conversation {instance.conversation_id} was deleted.")
    answers = [str(instance.pk), *(str(pk) for pk in Message.objects.filter(parent_id=instance.pk).values_list(
        "pk", flat=True))]
    _forget_copied_items(organization_id, answers)


def delete_runs_of_copies(conversation: Conversation, *, actor=None) -> None:
    """Its owner excluded it: the evaluation runs that asked its copied questions are deleted (the
    items stay, as the versions they were made from do; exclusion binds future builds)."""
    answers = [str(pk) for pk in conversation.messages.values_list("pk", flat=True)]
    _delete_runs(_copied_items(conversation.organization_id, answers), actor=actor)


def _conversation_deletion(origin) -> bool:
    """Is this message deleted because something other than messages was (its conversation, their
    owner, the organization)? Messages reach a deletion only through their conversation, whose
    own receiver then runs. Unknown origins (None) are treated as a message's own deletion."""
    if origin is None:
        return False
    model = origin.model if isinstance(origin, QuerySet) else type(origin)
    return model is not Message


def _withdraw_versions(conversation_id, reason: str) -> None:
    holding = VersionConversation.objects.filter(conversation_id=conversation_id).values("version_id")
    DatasetVersion.objects.filter(pk__in=holding, withdrawn_at__isnull=True).update(
        withdrawn_at=timezone.now(), withdrawn_reason=reason[:200])


def _copied_items(organization_id, answers: list[str]) -> QuerySet:
    """Items of the organization's sets made from versions that copied these answers (an item's id
    is the answer's), even when the version is gone."""
    return EvaluationItem.objects.filter(evaluation_set__source=EvaluationSet.Source.DATASET,
                                         evaluation_set__organization_id=organization_id, external_id__in=answers)


def _delete_runs(items: QuerySet, *, actor=None) -> None:
    """The run conversations evaluations made of these items, each through the audited deletion."""
    made = EvaluationResult.objects.filter(item__in=items, conversation_id__isnull=False).values("conversation_id")
    # Only evaluation runs: a result names the conversation its run opened, never anyone else's.
    runs = Conversation.objects.filter(pk__in=made, training_exclusion__reason__in=EVALUATION_RUNS)
    for run in runs.order_by("pk"):
        delete_conversation(run, actor=actor)  # None: whoever the audit context says caused it


def _forget_copied_items(organization_id, answers: list[str]) -> None:
    items = _copied_items(organization_id, answers)
    sets = set(items.values_list("evaluation_set_id", flat=True))
    if not sets:
        return
    _delete_runs(items)
    items.delete()  # their results with them
    for evaluation_set in EvaluationSet.objects.filter(pk__in=sets):
        evaluation_set.items_count = evaluation_set.items.count()
        evaluation_set.references_count = evaluation_set.items.exclude(reference="").count()
        evaluation_set.save(update_fields=["items_count", "references_count"])
