"""The writes of models and their deployments (the admin's and the platform API's): add, edit, delete.

An upstream's API key is never stored (only the name of its environment variable), and a
deployment's base_url may hold no credentials, so every field may be copied into the trail.
Each write validates the whole row (`full_clean`: field bounds, the model's fallbacks, a
deployment name unique within its model) before it writes, so a bad value is a ValidationError
(400 on the API, a form error in the admin), never a half-made model.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from agents.actions._changes import changes, snapshot
from agents.models import ModelDeployment, ModelEndpoint
from audit import actions
from audit.services import record

FIELDS = ("name", "provider_kind", "tier", "supports_tools", "enabled", "routing_strategy", "allowed_fails",
          "failure_window_seconds", "cooldown_seconds", "num_retries", "first_token_timeout_seconds", "fallbacks",
          "context_window_fallback")
DEPLOYMENT_FIELDS = ("name", "base_url", "upstream_model", "api_key_env", "weight", "priority", "rpm_limit",
                     "tpm_limit", "enabled")
MAX_DEPLOYMENTS = 50  # per model: the router reads them all on every pick


def _resource(endpoint: ModelEndpoint) -> str:
    return f"model_endpoint:{endpoint.pk}"


def _deployment_resource(deployment: ModelDeployment) -> str:
    return f"model_deployment:{deployment.pk}"


def _deployment_snapshot(deployment: ModelDeployment) -> dict:
    return {"id": deployment.pk, **snapshot(deployment, DEPLOYMENT_FIELDS)}


def create_endpoint(name: str, *, deployments: list[dict], actor: User | None = None, **fields) -> ModelEndpoint:
    """A model called `name` served by `deployments` (each a dict of ModelDeployment field values).

    One model_endpoint.created event, with the deployments in its metadata."""
    return add_endpoint(ModelEndpoint(name=name, **fields), [ModelDeployment(**values) for values in deployments],
                        actor=actor)


@transaction.atomic
def add_endpoint(endpoint: ModelEndpoint, deployments: Iterable[ModelDeployment], *,
                 actor: User | None = None) -> ModelEndpoint:
    """Save a new model with its new deployments (the admin's add form and its inline): one event."""
    deployments = list(deployments)
    _check_new_deployments(endpoint, deployments)
    endpoint.full_clean()
    endpoint.save()
    for deployment in deployments:
        deployment.endpoint = endpoint
        deployment.save()
    record(actions.MODEL_ENDPOINT_CREATED, actor=actor, resource=_resource(endpoint),
           metadata={**snapshot(endpoint, FIELDS), "deployments": [_deployment_snapshot(d) for d in deployments]})
    return endpoint


def _check_new_deployments(endpoint: ModelEndpoint, deployments: list[ModelDeployment]) -> None:
    if len(deployments) > MAX_DEPLOYMENTS:
        raise ValidationError({"deployments": [f"At most {MAX_DEPLOYMENTS} deployments per model."]})
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise ValidationError({"deployments": ["Each deployment of a model needs its own name."]})
    problems = []
    for deployment in deployments:
        try:
            deployment.full_clean(exclude=["endpoint"])  # the model is not saved yet; names checked above
        except ValidationError as error:
            problems += [f"{deployment.name or '?'}: {field}: {' '.join(messages)}"
                         for field, messages in error.message_dict.items()]
    if problems:
        raise ValidationError({"deployments": problems})


@transaction.atomic
def save_endpoint(endpoint: ModelEndpoint, *, actor: User | None = None) -> ModelEndpoint:
    """Create or update `endpoint` as edited (admin form or list, platform API), recording what changed.

    Its deployments are not touched (save_deployment); a new model saved here has none yet."""
    endpoint.full_clean()
    stored = ModelEndpoint.objects.select_for_update().filter(pk=endpoint.pk).first() if endpoint.pk else None
    endpoint.save()
    if stored is None:
        record(actions.MODEL_ENDPOINT_CREATED, actor=actor, resource=_resource(endpoint),
               metadata={**snapshot(endpoint, FIELDS), "deployments": []})
    else:
        record(actions.MODEL_ENDPOINT_UPDATED, actor=actor, resource=_resource(endpoint),
               metadata={"name": endpoint.name, "changes": changes(snapshot(stored, FIELDS), endpoint)})
    return endpoint


@transaction.atomic
def delete_endpoint(endpoint: ModelEndpoint, *, actor: User | None = None) -> None:
    """Delete a model and its deployments (listed in the one event)."""
    resource = _resource(endpoint)
    metadata = {**snapshot(endpoint, FIELDS),
                "deployments": [_deployment_snapshot(d) for d in endpoint.deployments.order_by("pk")]}
    endpoint.delete()
    record(actions.MODEL_ENDPOINT_DELETED, actor=actor, resource=resource, metadata=metadata)


@transaction.atomic
def save_deployment(deployment: ModelDeployment, *, actor: User | None = None) -> ModelDeployment:
    """Create or update one deployment of a saved model (admin inline or list, platform API)."""
    deployment.full_clean()
    stored = ModelDeployment.objects.select_for_update().filter(pk=deployment.pk).first() if deployment.pk else None
    if stored is None and deployment.endpoint.deployments.count() >= MAX_DEPLOYMENTS:
        raise ValidationError({"endpoint": [f"At most {MAX_DEPLOYMENTS} deployments per model."]})
    deployment.save()
    about = {"model": deployment.endpoint.name, "model_id": deployment.endpoint_id}
    if stored is None:
        record(actions.MODEL_DEPLOYMENT_CREATED, actor=actor, resource=_deployment_resource(deployment),
               metadata={**about, **_deployment_snapshot(deployment)})
    else:
        before = snapshot(stored, DEPLOYMENT_FIELDS)
        record(actions.MODEL_DEPLOYMENT_UPDATED, actor=actor, resource=_deployment_resource(deployment),
               metadata={**about, "name": deployment.name, "changes": changes(before, deployment)})
    return deployment


@transaction.atomic
def delete_deployment(deployment: ModelDeployment, *, actor: User | None = None) -> None:
    resource = _deployment_resource(deployment)
    metadata = {"model": deployment.endpoint.name, "model_id": deployment.endpoint_id,
                **_deployment_snapshot(deployment)}
    deployment.delete()
    record(actions.MODEL_DEPLOYMENT_DELETED, actor=actor, resource=resource, metadata=metadata)
