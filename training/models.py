"""Training data from real interactions: consent, exclusions, dataset definitions and their built versions.

A version is immutable once built: its file, its content hash and the conversations it holds
(`VersionConversation`, so a deleted conversation withdraws exactly the versions that hold it).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class TrainingConsent(models.Model):
    """Whether an organization's interactions may be used for training; no row means no (off by default)."""

    organization = models.OneToOneField("accounts.Organization", on_delete=models.CASCADE,
                                        related_name="training_consent")
    enabled = models.BooleanField(default=False)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    changed_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.organization_id}: {'on' if self.enabled else 'off'}"


class ConversationExclusion(models.Model):
    """A conversation kept out of every build: by its owner, or because an evaluation ran it.

    Training's own table, keyed by conversation, rather than a field on agents' Conversation: the
    conversation does not need to know training exists, and the row goes with it (CASCADE).
    """

    class Reason(models.TextChoices):
        USER = "user", "Excluded by its owner"
        EVALUATION = "evaluation", "An evaluation run"
        # A run of a set made from a dataset version asks a copy of training data again: a build
        # never selects it, include_evaluation or not (training.services.selected_answers).
        EVALUATION_COPY = "evaluation_copy", "An evaluation run of a set made from a dataset version"

    conversation = models.OneToOneField("agents.Conversation", on_delete=models.CASCADE,
                                        related_name="training_exclusion")
    reason = models.CharField(max_length=16, choices=Reason.choices, default=Reason.USER)
    excluded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.conversation_id} ({self.reason})"


# The reasons of evaluation runs: out of their owners' lists, and never let back into training.
EVALUATION_RUNS = (ConversationExclusion.Reason.EVALUATION, ConversationExclusion.Reason.EVALUATION_COPY)


class Dataset(models.Model):
    """A definition: which answers of the organization become training rows. Built into versions."""

    class Feedback(models.TextChoices):
        ANY = "any"
        POSITIVE = "positive"  # +1
        NEGATIVE = "negative"  # -1
        RATED = "rated"  # either

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # The filters; empty lists mean "any".
    agents = models.JSONField(default=list, blank=True)
    model_names = models.JSONField(default=list, blank=True, help_text="Model names (the API's `models`).")
    users = models.JSONField(default=list, blank=True, help_text="User ids of the organization.")
    teams = models.JSONField(default=list, blank=True, help_text="Team ids of the organization.")
    start = models.DateTimeField(null=True, blank=True)
    end = models.DateTimeField(null=True, blank=True)
    min_quality = models.FloatField(null=True, blank=True)
    feedback = models.CharField(max_length=16, choices=Feedback.choices, default=Feedback.ANY)
    statuses = models.JSONField(default=list, blank=True, help_text='Answer statuses; empty means ["complete"].')
    include_cached = models.BooleanField(default=False)
    include_failed = models.BooleanField(default=False)
    include_evaluation = models.BooleanField(default=False)
    validation_percent = models.PositiveSmallIntegerField(default=10)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name


class DatasetVersion(models.Model):
    """One build of a dataset: its progress while it runs, then its file, hash and counts, immutable."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    definition = models.JSONField(default=dict, help_text="The filters as they were when the build was asked for.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    processed = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)
    train_rows = models.PositiveIntegerField(default=0)
    validation_rows = models.PositiveIntegerField(default=0)
    exact_duplicates = models.PositiveIntegerField(default=0)
    near_duplicates = models.PositiveIntegerField(default=0)
    redactions = models.JSONField(default=dict, blank=True, help_text="Redactions made, per kind.")
    content_sha256 = models.CharField(max_length=64, blank=True)
    file_name = models.CharField(max_length=255, blank=True, help_text="Relative to RELAY_TRAINING_DIR.")
    file_size = models.PositiveBigIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="dataset_version_number")]

    def __str__(self):
        return f"{self.dataset_id} v{self.number}"

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_at is not None


class VersionConversation(models.Model):
    """A conversation a version holds rows of. The id, not a foreign key: it must outlive the conversation."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="conversations")
    conversation_id = models.UUIDField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "conversation_id"], name="version_conversation")]

    def __str__(self):
        return f"{self.version_id}: {self.conversation_id}"

from training.models_evaluation import Evaluation, EvaluationItem, EvaluationResult, EvaluationSet  # noqa: E402,F401
