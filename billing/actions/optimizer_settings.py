"""An organization's cost-optimizer switches, as edited in the admin."""

from __future__ import annotations

from django.db import transaction

from audit import actions
from audit.services import record
from billing.models import OptimizerSettings

_FIELDS = ("routing_enabled", "cache_enabled", "cache_ttl_seconds", "trimming_enabled", "history_token_budget")


def _metadata(settings: OptimizerSettings) -> dict:
    return {name: getattr(settings, name) for name in _FIELDS if hasattr(settings, name)}


@transaction.atomic
def save_optimizer_settings(settings: OptimizerSettings, *, actor=None) -> OptimizerSettings:
    settings.save()
    record(actions.OPTIMIZER_SETTINGS_SAVED, actor=actor, resource=f"optimizer_settings:{settings.pk}",
           organization=settings.organization_id, metadata=_metadata(settings))
    return settings


@transaction.atomic
def delete_optimizer_settings(settings: OptimizerSettings, *, actor=None) -> None:
    """Back to the defaults for that organization."""
    pk = settings.pk
    settings.delete()
    record(actions.OPTIMIZER_SETTINGS_DELETED, actor=actor, resource=f"optimizer_settings:{pk}",
           organization=settings.organization_id, metadata=_metadata(settings))
