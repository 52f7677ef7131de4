"""Conversations, messages, documents for RAG, and the models Relay serves with their deployments."""

import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="conversations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    agent = models.CharField(max_length=32)
    pinned = models.BooleanField(default=False, help_text="Listed first in its owner's sidebar.")
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
    # Indexed by (conversation, created_at) below, which serves a lookup by conversation alone too.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    # A conversation is a tree: each message follows its parent (an answer its question, a question
    # the answer before it). Messages with the same parent and role are versions of one turn: a
    # regenerated answer, an edited question. Sibling answers to one question are preference pairs.
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
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
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error_code = models.CharField(max_length=64, blank=True)
    # The run's id, named by the server (its ledger reservation and usage record carry the same).
    request_id = models.CharField(max_length=64, blank=True)
    client_request_id = models.CharField(max_length=64, blank=True,
                                         help_text="The client's X-Request-ID: a correlation label, not an identity.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        # Every run writes two rows and updates one, each through every index: status and request_id
        # are looked up by equality only, so they have no LIKE index (db_index gives PostgreSQL one
        # more of each: migration 0009).
        indexes = [models.Index(fields=["conversation", "created_at"]),
                   models.Index(fields=["status"], name="agents_message_status_idx"),
                   models.Index(fields=["request_id"], name="agents_message_request_idx")]

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


def validate_upstream_url(value: str) -> None:
    """An http(s) URL with a host; unlike URLValidator, single-label hosts (`http://vllm:8000/v1`,
    a container or service name) are fine: that is how upstreams are usually reached."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise ValidationError("The port is not a number.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL with a host, e.g. http://vllm:8000/v1.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValidationError("No credentials, query or fragment: name the key's environment variable instead.")


_ENV_NAME = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*\Z", "A name of an environment variable: letters, digits, _.")
UPSTREAM_KEY_PREFIX = "RELAY_UPSTREAM_KEY_"
UPSTREAM_KEY_ENV_RULE = (f"An upstream key comes only from RELAY_LLM_API_KEY, a variable named {UPSTREAM_KEY_PREFIX}<NAME>, "
                         "or one the operator lists in RELAY_UPSTREAM_KEY_ENVS.")


def upstream_key_env_allowed(name: str) -> bool:
    """Whether a deployment's key may be read from the environment variable `name`.

    Only variables meant for upstream keys: whoever edits a deployment (platform staff) chooses
    its base_url too, so naming any variable (SECRET_KEY, DATABASE_URL, ...) would send it to a
    host of their choosing. Checked when a deployment is validated (ModelDeployment.clean_fields)
    and again when the catalog reads the key (a row written past validation gets none).
    """
    return (name == "RELAY_LLM_API_KEY" or (name.startswith(UPSTREAM_KEY_PREFIX) and name != UPSTREAM_KEY_PREFIX)
            or name in settings.RELAY_UPSTREAM_KEY_ENVS)


MAX_FALLBACKS = 5


class ModelEndpointQuerySet(models.QuerySet):
    def served(self):
        """The rows the catalog offers: enabled upstream models with at least one enabled deployment."""
        live = ModelDeployment.objects.filter(endpoint=models.OuterRef("pk"), enabled=True)
        return self.filter(models.Exists(live), enabled=True).exclude(provider_kind=ModelEndpoint.Kind.LOCAL)


class ModelEndpoint(models.Model):
    """A model: the name clients ask for and are priced by, served by its deployments.

    How requests are spread over the deployments and what happens when they fail is set here
    (agents.providers.catalog.RoutingPolicy); the deployments are the upstreams themselves.
    """

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        LOCAL = "local", "Embedded local engine"

    class Tier(models.TextChoices):
        MINI = "mini"
        STANDARD = "standard"
        LARGE = "large"

    class Strategy(models.TextChoices):
        LEAST_BUSY = "least_busy", "Least busy (fewest requests in flight)"
        LOWEST_LATENCY = "lowest_latency", "Lowest latency (time to first token)"
        WEIGHTED_RANDOM = "weighted_random", "Weighted random"
        PRIORITY = "priority", "Priority order (lowest number first)"

    name = models.CharField(max_length=100, unique=True, help_text="The model name clients ask for.")
    provider_kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OPENAI)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    supports_tools = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    routing_strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.LEAST_BUSY)
    allowed_fails = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Failures of a deployment within the window that put it in cooldown.")
    failure_window_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(86400)])
    cooldown_seconds = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="How long a failing deployment rests (an upstream Retry-After overrides it).")
    num_retries = models.PositiveSmallIntegerField(
        default=2, validators=[MaxValueValidator(10)],
        help_text="Further attempts on other deployments of this model before its fallbacks.")
    first_token_timeout_seconds = models.FloatField(
        default=60, validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="An attempt with no first event by then fails as a timeout.")
    fallbacks = models.JSONField(
        default=list, blank=True,
        help_text=f"Model names tried in order when every deployment failed (at most {MAX_FALLBACKS}).")
    context_window_fallback = models.CharField(
        max_length=100, blank=True, help_text="The model used when the upstream says the context is too long.")

    objects = ModelEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        """Fallbacks name served models (rows, RELAY_LLM_MODELS, the engine's), never this one, once each."""
        from agents.providers.catalog import known_model_names

        errors, known = {}, None
        names = self.fallbacks if self.fallbacks is not None else []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            errors["fallbacks"] = ["A list of model names."]
        elif names:
            known = known_model_names()
            errors["fallbacks"] = [
                *(["A model cannot fall back to itself."] if self.name in names else []),
                *(["A model is named more than once."] if len(set(names)) != len(names) else []),
                *([f"At most {MAX_FALLBACKS} fallbacks."] if len(names) > MAX_FALLBACKS else []),
                *(f"{n[:100]!r} is not a served model." for n in dict.fromkeys(names) if n != self.name and n not in known),
            ][:MAX_FALLBACKS + 3]
        target = self.context_window_fallback
        if target and target == self.name:
            errors["context_window_fallback"] = ["A model cannot fall back to itself."]
        elif target and target not in (known if known is not None else known_model_names()):
            errors["context_window_fallback"] = [f"{target!r} is not a served model."]
        errors = {field: messages for field, messages in errors.items() if messages}
        if errors:
            raise ValidationError(errors)


class ModelDeployment(models.Model):
    """One upstream serving a model: where to send its requests, how much of them, and its limits."""

    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.CASCADE, related_name="deployments")
    name = models.SlugField(max_length=64, help_text="A label within its model (metrics, audit trail).")
    base_url = models.CharField(max_length=200, validators=[validate_upstream_url], help_text="e.g. http://vllm:8000/v1")
    upstream_model = models.CharField(max_length=200, blank=True, help_text="The model id upstream; defaults to "
                                                                            "the model's name.")
    api_key_env = models.CharField(
        max_length=100, blank=True, validators=[_ENV_NAME],
        help_text="Name of the environment variable holding the upstream API key (never stored here).",
    )
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(10000)],
                                         help_text="Share of the requests under weighted random.")
    priority = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(1000)],
                                                help_text="Lower is tried first under priority order.")
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)],
                                            help_text="Requests per minute, cluster-wide; empty: no limit.")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)],
                                            help_text="Tokens per minute, cluster-wide; empty: no limit.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["endpoint", "priority", "name"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "name"], name="deployment_unique_name")]

    def __str__(self):
        return f"{self.endpoint.name}/{self.name}" if self.endpoint_id else self.name

    def clean_fields(self, exclude=None):
        """The field validators, and api_key_env naming a variable meant for upstream keys (a
        check rather than a validator: its allowed names come from settings, not the schema)."""
        errors = {}
        try:
            super().clean_fields(exclude=exclude)
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        name = self.api_key_env
        if name and "api_key_env" not in errors and "api_key_env" not in (exclude or ()) \
                and not upstream_key_env_allowed(name):
            errors["api_key_env"] = [ValidationError(f"{name[:100]!r} is not an upstream key variable. "
                                                     f"{UPSTREAM_KEY_ENV_RULE}", code="upstream_key_env")]
        if errors:
            raise ValidationError(errors)


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
