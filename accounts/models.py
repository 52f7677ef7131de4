"""Tenants, people and credentials.

Everything in Relay belongs to one Organization; a User's role is exactly one of the role
groups (see accounts.roles); API keys act with the intersection of their scopes and their
owner's current permissions.
"""

import zoneinfo

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from accounts.roles import ALL_PERMISSIONS


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"Unknown time zone {value!r}.")


class Organization(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Team(models.Model):
    """A cost center inside an organization."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=200)
    # Made on first use: the auth group through which objects are shared with the whole team
    # (django-guardian grants object permissions to users and groups).
    group = models.OneToOneField("auth.Group", on_delete=models.SET_NULL, null=True, blank=True, editable=False,
                                 related_name="relay_team")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="team_unique_name_per_org")]

    def __str__(self):
        return f"{self.organization} / {self.name}"


class User(AbstractUser):
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="users", null=True, blank=True,
        help_text="Every user but a platform superuser belongs to one organization.",
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, related_name="members", null=True, blank=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        # The ten capabilities of docs/design.md section 4, checked with user.has_perm("accounts.<codename>").
        permissions = ALL_PERMISSIONS

    def clean(self):
        super().clean()
        if self.team_id and self.team.organization_id != self.organization_id:
            raise ValidationError({"team": "The team belongs to another organization."})

    @property
    def role(self) -> str | None:
        from accounts.roles import role_of

        return role_of(self)


class APIKeyQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))


class APIKey(models.Model):
    """A credential for programs. The secret is never stored: only its keyed hash."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    # The visible, unique part of the key (`rk_<prefix>_...`): how keys are found and shown.
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    hash_version = models.CharField(max_length=16)
    scopes = models.JSONField(default=list, blank=True, help_text="Permission codenames; empty means none.")
    allowed_agents = models.JSONField(default=list, blank=True, help_text="Agent names; empty means all.")
    allowed_models = models.JSONField(default=list, blank=True, help_text="Model names; empty means all.")
    allowed_ips = models.JSONField(default=list, blank=True, help_text="CIDR ranges; empty means any address.")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The key this one was minted through (POST /api/v1/keys/ with a key): it stays under that
    # key's limits, budgets and revocation (accounts/key_tree.py). Deleting a key deletes its
    # descendants, so that none outlives it as an unrestricted key.
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, editable=False,
                               related_name="children")

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} (rk_{self.prefix}…)"

    @property
    def organization_id(self):
        return self.owner.organization_id

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()
