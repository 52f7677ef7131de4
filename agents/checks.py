"""System checks (`manage.py check`): every model a request can reach must be billable, and every
deployment's key must come from a variable meant for upstream keys."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.checks import Warning, register

logger = logging.getLogger(__name__)
UNPRICED_ENDPOINT = "agents.W001"
UNPRICED_ENV_MODEL = "agents.W002"
KEY_ENV_REFUSED = "agents.W003"


@register("billing")
def unpriced_models(app_configs=None, **kwargs) -> list[Warning]:
    """An enabled model without a price in effect: requests naming it fail with 400 and it is
    never the default model (agents.providers.catalog.default_model)."""
    try:
        endpoints, env_models, missing = _unpriced()
    except Exception as error:  # before `migrate`, or with Redis down: a check must not stop the command
        logger.debug("price check skipped: %s", error)
        return []
    return [
        *(Warning("Enabled model endpoint without a price in effect.",
                  hint="Requests naming it are refused (400: no price is configured) and it is never the default model. "
                       "Add a price under Billing > Model prices, or disable the endpoint.",
                  obj=name, id=UNPRICED_ENDPOINT) for name in endpoints if name in missing),
        *(Warning("Model of RELAY_LLM_MODELS without a price in effect.",
                  hint="Requests naming it are refused (400: no price is configured) and it is never the default model. "
                       "Add a price under Billing > Model prices.",
                  obj=name, id=UNPRICED_ENV_MODEL) for name in env_models if name in missing),
    ]


def _unpriced() -> tuple[list[str], list[str], set[str]]:
    from agents.models import ModelEndpoint
    from agents.providers.catalog import unpriced_names

    endpoints = list(ModelEndpoint.objects.served().values_list("name", flat=True))
    env_models = [n for n in (settings.RELAY_LLM_MODELS or ["default"]) if n not in endpoints] \
        if settings.RELAY_LLM_BASE_URL else []  # as agents.providers.catalog lists them
    return endpoints, env_models, set(unpriced_names([*endpoints, *env_models]))


@register("security")
def refused_key_envs(app_configs=None, **kwargs) -> list[Warning]:
    """A deployment whose api_key_env names a variable not meant for upstream keys (a row from
    before the rule, or written past validation): the catalog sends it no key."""
    try:
        from agents.models import ModelDeployment, upstream_key_env_allowed

        rows = [(str(row), row.api_key_env) for row in
                ModelDeployment.objects.exclude(api_key_env="").select_related("endpoint")
                if not upstream_key_env_allowed(row.api_key_env)]
    except Exception as error:  # before `migrate`: a check must not stop the command
        logger.debug("upstream key check skipped: %s", error)
        return []
    return [Warning(f"Deployment's api_key_env {name!r} is not an upstream key variable: no key is sent.",
                    hint="Rename the variable RELAY_UPSTREAM_KEY_<NAME> (or use RELAY_LLM_API_KEY) and the "
                         "deployment's api_key_env with it, or list it in RELAY_UPSTREAM_KEY_ENVS.",
                    obj=deployment, id=KEY_ENV_REFUSED) for deployment, name in rows]
