"""Which models exist and who serves them: the embedded engine, env-configured or admin-added upstreams."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from agents.providers.openai_compat import OpenAICompatibleProvider

LOCAL_MODELS = ("local-mini", "local-large")
_providers: dict[tuple, OpenAICompatibleProvider] = {}


@dataclass(frozen=True)
class ModelChoice:
    name: str                      # what clients ask for and what is priced
    kind: str                      # "local" or "openai"
    upstream_model: str = ""
    base_url: str = ""
    api_key: str = ""
    supports_tools: bool = True

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def provider(self) -> OpenAICompatibleProvider:
        """One provider (connection pool) per upstream, shared by all requests."""
        key = (self.base_url, self.api_key)
        if key not in _providers:
            _providers[key] = OpenAICompatibleProvider(self.name, self.base_url, self.api_key or None)
        return _providers[key]


def _env_models() -> list[ModelChoice]:
    if not settings.RELAY_LLM_BASE_URL:
        return []
    names = settings.RELAY_LLM_MODELS or ["default"]
    return [ModelChoice(name=n, kind="openai", upstream_model=n, base_url=settings.RELAY_LLM_BASE_URL,
                        api_key=settings.RELAY_LLM_API_KEY) for n in names]


def _endpoint_models() -> list[ModelChoice]:
    import os

    from agents.models import ModelEndpoint

    choices = []
    for endpoint in ModelEndpoint.objects.filter(enabled=True):
        if endpoint.provider_kind == ModelEndpoint.Kind.LOCAL:
            continue
        choices.append(ModelChoice(
            name=endpoint.name, kind="openai", upstream_model=endpoint.upstream_model or endpoint.name,
            base_url=endpoint.base_url, api_key=os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else "",
            supports_tools=endpoint.supports_tools,
        ))
    return choices


_CATALOG_SECONDS = 5.0
_catalog: tuple[float, list[ModelChoice]] | None = None


def forget_catalog(**kwargs) -> None:
    """Drop this process's copy (a ModelEndpoint changed here; other processes wait out the TTL)."""
    global _catalog
    _catalog = None


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
