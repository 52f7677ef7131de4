"""Training's rules and reads: consent, which answers a definition selects, versions' state. No writes."""

from __future__ import annotations

import datetime as dt
import hashlib

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils.dateparse import parse_datetime

from agents.models import Message
from billing.models import UsageRecord
from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent

COMPLETE = [Message.Status.COMPLETE]
# Runs that did not finish well: only with include_failed. A running answer is never training data.
FAILED = [Message.Status.ERROR, Message.Status.BUDGET_STOP, Message.Status.INTERRUPTED, Message.Status.CANCELLED]
EMPTY_MESSAGE = "No interactions match the filters: the version has no rows."


class ConsentRequired(Exception):
    """The organization has not turned training on."""


class NotDownloadable(Exception):
    """A version that is not built (yet), or withdrawn."""

    def __init__(self, message: str, *, withdrawn: bool = False):
        super().__init__(message)
        self.withdrawn = withdrawn


def consent_enabled(organization_id) -> bool:
    return TrainingConsent.objects.filter(organization_id=organization_id, enabled=True).exists()


def consent_of(organization, rows: QuerySet | None = None) -> TrainingConsent:
    """The organization's consent row (among rows, the caller's through the gate), unsaved and off when unset."""
    rows = TrainingConsent.objects.all() if rows is None else rows
    return rows.filter(organization=organization).select_related("changed_by").first() or TrainingConsent(
        organization=organization, enabled=False)


def definition_of(dataset: Dataset) -> dict:
    """The filters as JSON: what a version records and builds from, so later edits cannot change it."""
    def moment(value: dt.datetime | None):
        return value.isoformat() if value else None

    return {"organization": dataset.organization_id, "agents": sorted(dataset.agents),
            "models": sorted(dataset.model_names), "users": sorted(dataset.users), "teams": sorted(dataset.teams),
            "start": moment(dataset.start), "end": moment(dataset.end), "min_quality": dataset.min_quality,
            "feedback": dataset.feedback, "statuses": sorted(dataset.statuses or COMPLETE),
            "include_cached": dataset.include_cached, "include_failed": dataset.include_failed,
            "include_evaluation": dataset.include_evaluation, "validation_percent": dataset.validation_percent}


def selected_answers(definition: dict) -> QuerySet:
    """The assistant messages a definition selects (each becomes at most one row)."""
    answers = Message.objects.filter(role=Message.Role.ASSISTANT,
                                     conversation__organization_id=definition["organization"])
    statuses = [s for s in definition["statuses"] if s in COMPLETE or (definition["include_failed"] and s in FAILED)]
    answers = answers.filter(status__in=statuses)
    if definition["agents"]:
        answers = answers.filter(Q(agent__in=definition["agents"]) |
                                 Q(agent="", conversation__agent__in=definition["agents"]))
    if definition["models"]:
        answers = answers.filter(model__in=definition["models"])
    people = Q()
    if definition["users"]:
        people |= Q(conversation__user_id__in=definition["users"])
    if definition["teams"]:
        people |= Q(conversation__user__team_id__in=definition["teams"])
    answers = answers.filter(people)
    if definition["start"]:
        answers = answers.filter(created_at__gte=parse_datetime(definition["start"]))
    if definition["end"]:
        answers = answers.filter(created_at__lt=parse_datetime(definition["end"]))
    if definition["min_quality"] is not None:
        answers = answers.filter(quality_score__gte=definition["min_quality"])
    feedback = {"positive": Q(feedback=1), "negative": Q(feedback=-1), "rated": Q(feedback__in=(1, -1))}
    answers = answers.filter(feedback.get(definition["feedback"], Q()))
    if not definition["include_cached"]:
        answers = answers.exclude(Exists(UsageRecord.objects.filter(message_id=OuterRef("pk"), cached=True)))
    excluded = ConversationExclusion.objects.filter(conversation=OuterRef("conversation_id"))
    if definition["include_evaluation"]:
        # Runs of uploaded sets only. A run of a set made from a version asked a copy of training
        # data again (EVALUATION_COPY): its source may be deleted or excluded since, so it stays out.
        excluded = excluded.exclude(reason=ConversationExclusion.Reason.EVALUATION)
    return answers.exclude(Exists(excluded))


def split_of(conversation_id, validation_percent: int) -> str:
    """train or validation, by a hash of the conversation id: a conversation's rows never straddle the split."""
    bucket = int.from_bytes(hashlib.sha256(str(conversation_id).encode()).digest()[:8], "big") % 100
    return "validation" if bucket < validation_percent else "train"


def downloadable(version: DatasetVersion) -> DatasetVersion:
    """The version, if its rows may leave it now (a download, a set made from it): NotDownloadable,
    or ConsentRequired while its organization's consent is off (the version stays: consent back on
    restores it)."""
    if version.withdrawn:
        raise NotDownloadable(f"This version was withdrawn ({version.withdrawn_reason}) and can no longer be "
                              "downloaded; build the dataset again.", withdrawn=True)
    if not consent_enabled(version.dataset.organization_id):
        raise ConsentRequired("This organization has turned off training on its interactions: its versions "
                              "cannot be downloaded or made into evaluation sets until an organization admin "
                              "turns it on again.")
    if version.state != DatasetVersion.State.DONE:
        raise NotDownloadable(f"This version is {version.state}, not built: nothing to download yet.")
    return version
