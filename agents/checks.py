"""System checks (`manage.py check`): every model a request can reach must be billable."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.checks import Warning, register

logger = logging.getLogger(__name__)
UNPRICED_ENDPOINT = "agents.W001"
UNPRICED_ENV_MODEL = "agents.W002"


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
