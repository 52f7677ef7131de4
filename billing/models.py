"""Prices, usage and budgets (docs/design.md sections 3 and 7).

Money is Decimal(18, 10) here and integer nano-dollars in the ledger. Prices are effective-dated:
a change is a new row, and every UsageRecord keeps the price row it was charged at.
"""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from billing.money import MAX_LIMIT_USD, decimal_text, format_usd, parse_amount

MONEY = {"max_digits": 18, "decimal_places": 10}


def validate_price(value) -> None:
    try:
        parse_amount(value, field="Price", allow_zero=True, maximum=Decimal("1000"))
    except ValueError as error:
        raise ValidationError(str(error))


def validate_limit(value) -> None:
    try:
        parse_amount(value, field="Limit", allow_zero=False, maximum=MAX_LIMIT_USD)
    except ValueError as error:
        raise ValidationError(str(error))


def validate_thresholds(value) -> None:
    if not isinstance(value, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in value):
        raise ValidationError("Alert thresholds must be a list of whole percentages.")
    if any(not 1 <= t <= 100 for t in value):
        raise ValidationError("Alert thresholds must be between 1 and 100.")
    if len(set(value)) != len(value):
        raise ValidationError("Alert thresholds must not repeat.")


class ModelPrice(models.Model):
    model = models.CharField(max_length=100, db_index=True)
    input_per_1k = models.DecimalField(**MONEY, validators=[validate_price], help_text="USD per 1,000 input tokens")
    output_per_1k = models.DecimalField(**MONEY, validators=[validate_price], help_text="USD per 1,000 output tokens")
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="modelprice_unique_version"),
            models.CheckConstraint(condition=models.Q(input_per_1k__gte=0, output_per_1k__gte=0),
                                   name="modelprice_not_negative"),
            models.CheckConstraint(condition=models.Q(input_per_1k__gt=0) | models.Q(output_per_1k__gt=0),
                                   name="modelprice_not_free"),
        ]

    def __str__(self):
        return f"{self.model} {decimal_text(self.input_per_1k)}/{decimal_text(self.output_per_1k)} from {self.effective_from:%Y-%m-%d %H:%M}"

    def clean(self):
        if self.input_per_1k is not None and self.output_per_1k is not None \
                and self.input_per_1k == 0 and self.output_per_1k == 0:
            raise ValidationError("A price needs a non-zero input or output price.")


class UsageRecord(models.Model):
    """Exactly one per agent run or /v1 call, whatever its outcome."""

    STATUS_CHOICES = [(s, s.replace("_", " ")) for s in ("complete", "cancelled", "error", "budget_stop",
                                                           "interrupted")]

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="usage")
    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage")
    # PROTECT like user: a key's budget, and the budgets of the keys above it, count its usage through
    # this column, so a key that was used is revoked, never deleted (its spend would leave them).
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.PROTECT, null=True, blank=True,
                                related_name="usage")
    agent = models.CharField(max_length=50)
    model = models.CharField(max_length=100)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, related_name="usage")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    cached = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES)
    complete = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=64, unique=True, help_text="The run's id, named by the server.")
    client_request_id = models.CharField(max_length=64, blank=True,
                                         help_text="The client's X-Request-ID: a correlation label, not an identity.")
    message_id = models.UUIDField(null=True, blank=True)  # agents.Message (its own app may be pruned)
    # The time the request was reserved: it decides the budget period the request belongs to.
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Stats and budgets aggregate over one scope and a time range.
            models.Index(fields=["organization", "created_at"], name="usage_org_time"),
            models.Index(fields=["team", "created_at"], name="usage_team_time"),
            models.Index(fields=["user", "created_at"], name="usage_user_time"),
            models.Index(fields=["api_key", "created_at"], name="usage_key_time"),
        ]

    def __str__(self):
        return f"{self.request_id} {self.model} {format_usd(self.cost)}"


class ToolUsage(models.Model):
    usage = models.ForeignKey(UsageRecord, on_delete=models.CASCADE, related_name="tools")
    tool = models.CharField(max_length=100)
    duration_ms = models.PositiveIntegerField(default=0)
    tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**MONEY, default=Decimal(0))

    def __str__(self):
        return f"{self.tool} ({self.duration_ms} ms)"

    @classmethod
    def from_call(cls, record: UsageRecord, call: dict) -> "ToolUsage":
        from billing.money import cost_usd

        return cls(usage=record, tool=str(call.get("tool") or call.get("name") or "unknown")[:100],
                   duration_ms=max(0, int(call.get("duration_ms") or 0)), tokens=max(0, int(call.get("tokens") or 0)),
                   cost=cost_usd(max(0, int(call.get("cost_nanos") or 0))))


class Budget(models.Model):
    SCOPES = ["organization", "team", "user", "api_key"]
    PERIODS = ["daily", "weekly", "monthly", "total"]

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="budgets")
    scope = models.CharField(max_length=20, choices=[(s, s.replace("_", " ")) for s in SCOPES])
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="budgets")
    api_key = models.ForeignKey("accounts.APIKey", on_delete=models.CASCADE, null=True, blank=True,
                                related_name="budgets")
    period = models.CharField(max_length=10, choices=[(p, p) for p in PERIODS])
    limit_usd = models.DecimalField(**MONEY, validators=[validate_limit])
    hard = models.BooleanField(default=True, help_text="Hard budgets stop requests; soft ones only alert.")
    alert_thresholds = models.JSONField(default=list, blank=True, validators=[validate_thresholds])
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["organization", "scope", "period"]
        constraints = [
            models.CheckConstraint(condition=models.Q(limit_usd__gt=0), name="budget_limit_positive"),
            *[models.UniqueConstraint(fields=["organization", *target, "period"], condition=models.Q(scope=scope),
                                      name=f"budget_one_per_{scope}_period")
              for scope, target in (("organization", []), ("team", ["team"]), ("user", ["user"]),
                                    ("api_key", ["api_key"]))],
        ]

    def __str__(self):
        return f"{self.period} {self.scope} budget {format_usd(self.limit_usd)}"

    def clean(self):
        targets = {"team": self.team_id, "user": self.user_id, "api_key": self.api_key_id}
        wanted = targets.get(self.scope)
        if self.scope != "organization" and not wanted:
            raise ValidationError({self.scope: f"A {self.scope} budget needs its {self.scope}."})
        if any(value for name, value in targets.items() if name != self.scope):
            raise ValidationError("Set only the target of the budget's scope.")

    @property
    def ledger_id(self) -> str:
        # Creation time in the key: a row id reused after a delete (or a test rollback) never
        # inherits another budget's counters.
        return f"b{self.pk}.{int(self.created_at.timestamp() * 1_000_000)}"

    def target_name(self) -> str:
        """Who the budget covers, in words (alerts, console, reconcile reports)."""
        if self.scope == "team":
            return f"team {self.team.name}"
        if self.scope == "user":
            return f"user {self.user.username}"
        if self.scope == "api_key":
            return f"API key {self.api_key.name} (rk_{self.api_key.prefix}…)"
        return f"organization {self.organization.name}"


class BudgetAlert(models.Model):
    """A soft threshold crossed: at most one per budget, period and threshold."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_key = models.CharField(max_length=20)
    threshold = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["budget", "period_key", "threshold"],
                                               name="budgetalert_once_per_threshold")]

    def __str__(self):
        return f"{self.budget} reached {self.threshold}% in {self.period_key}"


class OptimizerSettings(models.Model):
    """Per-organization switches of the cost optimizer (agents/optimizer); no row means all on."""

    organization = models.OneToOneField("accounts.Organization", on_delete=models.CASCADE,
                                        related_name="optimizer_settings")
    routing_enabled = models.BooleanField(
        default=True, help_text="Send simple queries to the cheapest allowed model when the caller names none.")
    cache_enabled = models.BooleanField(default=True, help_text="Answer repeated questions from the response cache.")
    cache_ttl_seconds = models.PositiveIntegerField(
        default=3600, validators=[MinValueValidator(1), MaxValueValidator(30 * 24 * 3600)],
        help_text="How long a cached answer is served (seconds, at most 30 days).")
    trimming_enabled = models.BooleanField(
        default=True, help_text="Drop the oldest turns of long conversations beyond the history budget.")
    history_token_budget = models.PositiveIntegerField(
        default=4000, validators=[MinValueValidator(100), MaxValueValidator(1_000_000)],
        help_text="Tokens of earlier conversation sent with a question when trimming is on.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "optimizer settings"

    def __str__(self):
        return f"cost optimizer of organization {self.organization_id}"
