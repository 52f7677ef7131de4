"""Which model a request runs on when the caller did not name one.

`simple` queries go to the cheapest candidate, everything else to the strongest: only the
classifier's most confident label saves money, so a `medium` or `complex` query is never
downgraded. Candidates are the models the request may use (the API key's allow-list) served by
the same kind of provider as the default model — the embedded engine's local-mini/local-large,
or the configured upstream models — and priced in `ModelPrice`.

"Cheapest" is the lowest price of a typical request (input + output per 1K tokens, output
weighted 3:1 as answers dominate); "strongest" is the highest tier (mini < standard < large;
models without a tier rank by price), ties broken by price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from accounts import key_tree
from agents.optimizer.classifier import SIMPLE

TIER_RANK = {"mini": 0, "standard": 1, "large": 2}
LOCAL_TIERS = {"local-mini": "mini", "local-large": "large"}


@dataclass(frozen=True)
class Candidate:
    name: str
    input_per_1k: Decimal
    output_per_1k: Decimal
    tier: str | None = None

    @property
    def typical_price(self) -> Decimal:
        return self.input_per_1k + 3 * self.output_per_1k

    @property
    def strength(self) -> tuple:
        return (TIER_RANK.get(self.tier or "", -1), self.typical_price)


def pick_model(label: str, candidates: list[Candidate], default: str) -> str:
    """The model for a query of this complexity; the default when there is nothing to choose from."""
    if len(candidates) < 2:
        return default
    if label == SIMPLE:
        return min(candidates, key=lambda c: (c.typical_price, c.name)).name
    return max(candidates, key=lambda c: (c.strength, c.name)).name


def load_candidates(default_choice, api_key, now) -> list[Candidate]:
    """The priced models this request may be routed between (sync ORM; run through run_db)."""
    from agents.models import ModelEndpoint
    from agents.providers.catalog import available_models
    from billing.models import ModelPrice

    names = [m.name for m in available_models()
             if m.kind == default_choice.kind and key_tree.permits(api_key, "allowed_models", m.name)]
    if len(names) < 2:
        return []
    tiers = dict(ModelEndpoint.objects.filter(name__in=names).values_list("name", "tier"))
    latest: dict[str, ModelPrice] = {}
    for price in ModelPrice.objects.filter(model__in=names, effective_from__lte=now).order_by("effective_from"):
        latest[price.model] = price  # ordered oldest first: the last one is in effect
    return [Candidate(n, latest[n].input_per_1k, latest[n].output_per_1k, tiers.get(n) or LOCAL_TIERS.get(n))
            for n in names if n in latest]
