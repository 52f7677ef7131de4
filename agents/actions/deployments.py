"""Health transitions of model deployments (the router's circuit breaker), recorded for the trail.

The router (agents/router) changes the state in Redis; exactly one caller in the cluster sees each
transition and records it here. A deployment is platform infrastructure, and the request that
happened to trip it is not its actor: events carry no actor and no organization (only platform
operators, who see every organization's trail, read them), and keep the request id for tracing.
"""

from __future__ import annotations

from django.db import transaction

from audit import actions, context
from audit.services import record


def _record(action: str, *, model: str, deployment: str, key: str, reason: str, seconds: float) -> None:
    system = context.AuditContext(request_id=context.current().request_id)
    with context.bind(system):
        record(action, organization=None, resource=f"model_deployment:{key}",
               metadata={"model": model, "deployment": deployment, "reason": reason, "seconds": round(seconds, 3)})


@transaction.atomic
def cooldown_entered(*, model: str, deployment: str, key: str, reason: str, seconds: float) -> None:
    """The deployment stops receiving traffic for `seconds` (reason: failures, retry_after, probe_failed)."""
    _record(actions.DEPLOYMENT_COOLDOWN_ENTERED, model=model, deployment=deployment, key=key, reason=reason,
            seconds=seconds)


@transaction.atomic
def cooldown_left(*, model: str, deployment: str, key: str, reason: str, seconds: float) -> None:
    """The deployment is healthy again after `seconds` tripped (reason: probe_succeeded, success)."""
    _record(actions.DEPLOYMENT_COOLDOWN_LEFT, model=model, deployment=deployment, key=key, reason=reason,
            seconds=seconds)
