"""Evaluations: a set of prompts (with reference answers where known) run against models, side by side.

Imported at the end of training/models.py, so Django finds these models in the training app.
An evaluation's runs are ordinary Relay runs (conversations, messages, usage records) charged to
its own API key; its results point at them by id, not by foreign key: a result must outlive the
conversation (deleting one does not rewrite an evaluation's figures).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class EvaluationSet(models.Model):
    """Prompts to evaluate models on: from a dataset version, or an uploaded JSONL file."""

    class Source(models.TextChoices):
        DATASET = "dataset", "A dataset version"
        UPLOAD = "upload", "An uploaded JSONL file"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE,
                                     related_name="evaluation_sets")
    name = models.CharField(max_length=200)
    source = models.CharField(max_length=16, choices=Source.choices)
    dataset_version = models.ForeignKey("training.DatasetVersion", on_delete=models.SET_NULL, null=True,
                                        blank=True, related_name="evaluation_sets")
    items_count = models.PositiveIntegerField(default=0)
    references_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name


class EvaluationItem(models.Model):
    evaluation_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(help_text="1-based: the line of the upload, the row of the version.")
    external_id = models.CharField(max_length=200, blank=True)
    prompt = models.TextField()
    reference = models.TextField(blank=True, help_text="Empty: no reference answer.")
    agent = models.CharField(max_length=32, blank=True, help_text="Empty: the evaluation's agent.")

    class Meta:
        ordering = ["evaluation_set", "position"]
        constraints = [models.UniqueConstraint(fields=["evaluation_set", "position"], name="evaluation_item_position")]

    def __str__(self):
        return f"{self.evaluation_set_id}#{self.position}"


class Evaluation(models.Model):
    """A set run against targets (model names, or relay-<agent>), charged to its starter's evaluation key."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        STOPPED_BY_BUDGET = "stopped_by_budget"
        FAILED = "failed"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="evaluations")
    evaluation_set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="evaluations")
    targets = models.JSONField(default=list, help_text="Model names (or relay-<agent>), compared side by side.")
    agent = models.CharField(max_length=32, default="general")
    max_tokens = models.PositiveIntegerField(default=512)
    state = models.CharField(max_length=24, choices=State.choices, default=State.QUEUED)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+", help_text="The evaluation key its runs are charged to.")
    client_ip = models.GenericIPAddressField(
        null=True, blank=True,
        help_text="The address it was started from; before each run its key's address ranges must still admit it.")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Runs to make: items x targets.")
    processed = models.PositiveIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"evaluation {self.pk} of set {self.evaluation_set_id}"

    @property
    def stopped_by_budget(self) -> bool:
        return self.state == self.State.STOPPED_BY_BUDGET


class EvaluationResult(models.Model):
    """One item answered by one target: the run's figures as stored, and its agreement with the reference."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="results")
    item = models.ForeignKey(EvaluationItem, on_delete=models.CASCADE, related_name="+")
    target = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    answer = models.TextField(blank=True)
    conversation_id = models.UUIDField(null=True, blank=True)
    message_id = models.UUIDField(null=True, blank=True)
    quality_score = models.FloatField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    agreement = models.FloatField(null=True, blank=True, help_text="1/0 exact match, or token F1; none without a reference.")
    agreement_kind = models.CharField(max_length=8, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["evaluation", "item__position", "target"]
        constraints = [models.UniqueConstraint(fields=["evaluation", "item", "target"], name="evaluation_result_once")]

    def __str__(self):
        return f"{self.evaluation_id}: {self.item_id} @ {self.target}"
