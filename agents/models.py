"""Conversations, messages, documents for RAG, and upstream model endpoints."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="conversations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    agent = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self):
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        ERROR = "error"
        BUDGET_STOP = "budget_stop"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    agent = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=18, decimal_places=10, default=0)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token.")
    quality_score = models.FloatField(null=True, blank=True, help_text="The automatic score adjusted by feedback.")
    quality_auto = models.FloatField(null=True, blank=True, help_text="The agent's own score by its rule.")
    feedback = models.SmallIntegerField(null=True, blank=True, help_text="-1 or +1 from the user.")
    tool_calls = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    # The run's id, named by the server (its ledger reservation and usage record carry the same).
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    client_request_id = models.CharField(max_length=64, blank=True,
                                         help_text="The client's X-Request-ID: a correlation label, not an identity.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["conversation", "created_at"])]

    def __str__(self):
        return f"{self.role}: {self.content[:40]}"


class Document(models.Model):
    """A text the RAG agent retrieves from. Built-in docs (Relay's own) have no organization."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="documents")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="documents")
    name = models.CharField(max_length=255)
    title = models.CharField(max_length=255, blank=True)
    kind = models.CharField(max_length=16)  # text, markdown, html, pdf
    size = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    builtin = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("view_document_shared", "Can read a shared document")]

    def __str__(self):
        return self.title or self.name


class DocumentChunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    text = models.TextField()
    start_char = models.PositiveIntegerField(default=0)
    end_char = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["document", "index"]
        constraints = [models.UniqueConstraint(fields=["document", "index"], name="chunk_unique_index")]

    def __str__(self):
        return f"{self.document_id}#{self.index}"


class ModelEndpoint(models.Model):
    """An upstream language model Relay can route to (besides the embedded local engine)."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        LOCAL = "local", "Embedded local engine"

    class Tier(models.TextChoices):
        MINI = "mini"
        STANDARD = "standard"
        LARGE = "large"

    name = models.CharField(max_length=100, unique=True, help_text="The model name clients ask for.")
    provider_kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OPENAI)
    base_url = models.URLField(blank=True, help_text="e.g. http://vllm:8000/v1")
    upstream_model = models.CharField(max_length=200, blank=True, help_text="The model id upstream; defaults to name.")
    api_key_env = models.CharField(
        max_length=100, blank=True,
        help_text="Name of the environment variable holding the upstream API key (never stored here).",
    )
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    supports_tools = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key on a run endpoint and the run it started (agents/idempotency.py).

    Keys belong to one credential (an API key, or the user for sessions and JWTs); a replay with
    the same key returns that run's stored answer instead of running and billing again.
    """

    credential = models.CharField(max_length=40, help_text='"key:<id>" or "user:<id>".')
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64, help_text="SHA-256 of the endpoint and the canonical JSON body.")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                                help_text="The run's answer; empty while the run is being admitted.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["credential", "key"], name="idempotency_key_per_credential")]

    def __str__(self):
        return f"{self.credential} {self.key}"
