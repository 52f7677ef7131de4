"""The writes of upstream model endpoints (the admin's): add, edit, delete.

The upstream's API key is never stored (only the name of its environment variable), so every
field may be copied into the trail.
"""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from agents.actions._changes import changes, snapshot
from agents.models import ModelEndpoint
from audit import actions
from audit.services import record

FIELDS = ("name", "provider_kind", "base_url", "upstream_model", "api_key_env", "tier", "supports_tools", "enabled")


def _resource(endpoint: ModelEndpoint) -> str:
    return f"model_endpoint:{endpoint.pk}"


@transaction.atomic
def save_endpoint(endpoint: ModelEndpoint, *, actor: User | None = None) -> None:
    """Create or update `endpoint` as edited (admin form or list), recording what changed."""
    stored = ModelEndpoint.objects.select_for_update().filter(pk=endpoint.pk).first() if endpoint.pk else None
    endpoint.save()
    if stored is None:
        record(actions.MODEL_ENDPOINT_CREATED, actor=actor, resource=_resource(endpoint),
               metadata=snapshot(endpoint, FIELDS))
    else:
        record(actions.MODEL_ENDPOINT_UPDATED, actor=actor, resource=_resource(endpoint),
               metadata={"name": endpoint.name, "changes": changes(snapshot(stored, FIELDS), endpoint)})


@transaction.atomic
def delete_endpoint(endpoint: ModelEndpoint, *, actor: User | None = None) -> None:
    resource, metadata = _resource(endpoint), snapshot(endpoint, FIELDS)
    endpoint.delete()
    record(actions.MODEL_ENDPOINT_DELETED, actor=actor, resource=resource, metadata=metadata)
