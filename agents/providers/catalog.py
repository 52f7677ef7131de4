"""Which models exist and who serves them: the embedded engine, env-configured or admin-added models.

A model (the name clients ask for and are priced by) is served by its deployments, the upstreams
the router (agents/router/) spreads its requests over by the model's RoutingPolicy.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from agents.providers.openai_compat import OpenAICompatibleProvider

logger = logging.getLogger(__name__)
LOCAL_MODELS = ("local-mini", "local-large")
_providers: dict[tuple, OpenAICompatibleProvider] = {}


async def close_providers() -> None:
    """Close the pooled upstream connections opened on the running loop (relay.serve's shutdown)."""
    for provider in list(_providers.values()):
        await provider.aclose()


@dataclass(frozen=True)
class RoutingPolicy:
    strategy: str = "least_busy"
    allowed_fails: int = 3
    failure_window: float = 60.0      # seconds
    cooldown: float = 30.0            # seconds
    num_retries: int = 2
    first_token_timeout: float = 60.0


@dataclass(frozen=True)
class DeploymentChoice:
    key: str            # unique across the cluster: str(ModelDeployment.pk), or "env:<model>"; router state is keyed by it
    name: str           # label within its model (metrics label `deployment`, audit metadata)
    base_url: str
    upstream_model: str
    api_key: str = ""
    weight: int = 1
    priority: int = 0
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    def provider(self) -> OpenAICompatibleProvider:
        """One provider (connection pool) per upstream, shared by all requests. It makes one attempt:
        retrying is the router's, which moves to another deployment instead of hammering this one."""
        key = (self.base_url, self.api_key)
        if key not in _providers:
            _providers[key] = OpenAICompatibleProvider(self.name, self.base_url, self.api_key or None, max_retries=0)
        return _providers[key]


@dataclass(frozen=True)
class ModelChoice:
    name: str                                        # what clients ask for and what is priced
    kind: str                                        # "local", "openai" or "stored" (replays)
    supports_tools: bool = True
    deployments: tuple[DeploymentChoice, ...] = ()   # the enabled ones; () for local models
    policy: RoutingPolicy = RoutingPolicy()
    fallbacks: tuple[str, ...] = ()
    context_window_fallback: str = ""

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


def _env_names() -> list[str]:
    return (settings.RELAY_LLM_MODELS or ["default"]) if settings.RELAY_LLM_BASE_URL else []


def _env_models() -> list[ModelChoice]:
    return [ModelChoice(name=n, kind="openai", deployments=(DeploymentChoice(
        key=f"env:{n}", name="env", base_url=settings.RELAY_LLM_BASE_URL, upstream_model=n,
        api_key=settings.RELAY_LLM_API_KEY or ""),)) for n in _env_names()]


_refused_key_envs: set[tuple[int, str]] = set()  # (deployment, variable) already warned about


def _upstream_key(row, model_name: str) -> str:
    """The deployment's key: the value of its api_key_env, only when that names a variable meant
    for upstream keys (agents.models.upstream_key_env_allowed). A row written past validation
    naming any other variable (SECRET_KEY, ...) gets no key, and a warning once per process."""
    from agents.models import upstream_key_env_allowed

    name = row.api_key_env
    if not name:
        return ""
    if not upstream_key_env_allowed(name):
        if (row.pk, name) not in _refused_key_envs:
            _refused_key_envs.add((row.pk, name))
            logger.warning("deployment %s/%s names api_key_env %r, which is not an upstream key variable: "
                           "no key is sent (use RELAY_LLM_API_KEY, RELAY_UPSTREAM_KEY_<NAME>, or list it in "
                           "RELAY_UPSTREAM_KEY_ENVS)", model_name, row.name, name[:100])
        return ""
    return os.environ.get(name, "")


def _deployment(row, model_name: str) -> DeploymentChoice:
    return DeploymentChoice(
        key=str(row.pk), name=row.name, base_url=row.base_url, upstream_model=row.upstream_model or model_name,
        api_key=_upstream_key(row, model_name), weight=row.weight,
        priority=row.priority, rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit)


def _endpoint_models() -> list[ModelChoice]:
    """The enabled rows with at least one enabled deployment (a model nobody serves is not offered)."""
    from django.db.models import Prefetch

    from agents.models import ModelDeployment, ModelEndpoint

    enabled = Prefetch("deployments", queryset=ModelDeployment.objects.filter(enabled=True).order_by("priority", "name"))
    choices = []
    for endpoint in ModelEndpoint.objects.filter(enabled=True).prefetch_related(enabled):
        deployments = tuple(_deployment(row, endpoint.name) for row in endpoint.deployments.all())
        if endpoint.provider_kind == ModelEndpoint.Kind.LOCAL or not deployments:
            continue
        choices.append(ModelChoice(
            name=endpoint.name, kind="openai", supports_tools=endpoint.supports_tools, deployments=deployments,
            policy=RoutingPolicy(strategy=endpoint.routing_strategy, allowed_fails=endpoint.allowed_fails,
                                 failure_window=float(endpoint.failure_window_seconds),
                                 cooldown=float(endpoint.cooldown_seconds), num_retries=endpoint.num_retries,
                                 first_token_timeout=float(endpoint.first_token_timeout_seconds)),
            fallbacks=tuple(endpoint.fallbacks or ()), context_window_fallback=endpoint.context_window_fallback,
        ))
    return choices


def known_model_names() -> set[str]:
    """Every name a fallback may point to: model rows (served or not yet), env models, the engine's."""
    from agents.models import ModelEndpoint

    return {*ModelEndpoint.objects.values_list("name", flat=True), *_env_names(), *LOCAL_MODELS}


_CATALOG_SECONDS = 5.0
_catalog: tuple[float, list[ModelChoice]] | None = None


def forget_catalog(**kwargs) -> None:
    """Drop this process's copy (a model or deployment changed here; other processes wait out the TTL).

    From a save or delete signal, again when the transaction commits: a request in between may
    have read the rows as they were before and kept them."""
    global _catalog
    _catalog = None
    if kwargs.get("sender") is not None:
        transaction.on_commit(forget_catalog)


def available_models() -> list[ModelChoice]:
    """Upstream models first, then the embedded engine's (the default is the first priced one).

    Every model call asks, so the list is kept for a few seconds instead of read each time.
    """
    global _catalog
    now = time.monotonic()
    if _catalog is not None and now - _catalog[0] < _CATALOG_SECONDS:
        return _catalog[1]
    seen, models = set(), []
    for choice in [*_endpoint_models(), *_env_models(), *(ModelChoice(n, "local") for n in LOCAL_MODELS)]:
        if choice.name not in seen:
            seen.add(choice.name)
            models.append(choice)
    _catalog = (now, models)
    return models


def resolve(name: str | None) -> ModelChoice | None:
    """The model called name, or the default when name is empty; None for an unknown name."""
    models = available_models()
    if not name:
        return default_model(models)
    return next((m for m in models if m.name == name), None)


def default_model(models: list[ModelChoice] | None = None) -> ModelChoice:
    """The first model with a price in effect: a model nobody priced cannot be billed, so it is
    never chosen for a request that names no model (it stays usable by name, with a clear 400).

    With nothing priced at all, the first model: the request then says which price is missing.
    """
    models = models if models is not None else available_models()
    priced = _price_lookup()
    return next((m for m in models if priced(m.name)), models[0])


def unpriced_names(names: list[str], now=None) -> list[str]:
    """Those of `names` without a price in effect at `now` (the system check and the admin)."""
    priced = _price_lookup(now)
    return [name for name in names if not priced(name)]


def _price_lookup(now=None):
    """name -> whether a price is in effect, read through billing's per-process price copies (one
    cache read, no query once loaded), so a price added or removed anywhere counts at once."""
    from django.utils import timezone

    from billing.pricing import UnknownModel, current_price
    from billing.rule_cache import RULES

    rules, now = RULES.view(), now or timezone.now()

    def priced(name: str) -> bool:
        try:
            current_price(name, now, rules)
        except UnknownModel:
            return False
        return True

    return priced
