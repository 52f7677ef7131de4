"""Model prices: effective-dated rows, the newest one in effect wins."""

from datetime import datetime

from billing.models import ModelPrice
from billing.rule_cache import RULES


class UnknownModel(Exception):
    """No price exists for the model (400 `unknown_model`)."""

    def __init__(self, model: str):
        super().__init__(f"No price is configured for model {model!r}; an admin can add one under Model prices.")
        self.model = model


def current_price(model: str, now: datetime, rules=None) -> ModelPrice:
    """The price in effect at `now` (rules: a billing.rule_cache view, to share its one cache read)."""
    prices = (rules or RULES.view()).get(
        ("prices", model), lambda: list(ModelPrice.objects.filter(model=model).order_by("-effective_from")))
    price = next((p for p in prices if p.effective_from <= now), None)
    if price is None:
        raise UnknownModel(model)
    return price


# The seed of docs/design.md section 3 (the migration keeps its own frozen copy).
DEFAULT_PRICES = {
    "gpt-4o": ("0.005", "0.015"),
    "gpt-4o-mini": ("0.00015", "0.0006"),
    "gpt-4o-vision": ("0.01", "0.03"),
    "local-mini": ("0.0001", "0.0002"),
    "local-large": ("0.0005", "0.0015"),
}


def ensure_default_prices(**kwargs) -> None:
    """post_migrate: give every default model a price if it has none (e.g. after `flush`)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from billing.models import ModelPrice

    priced = set(ModelPrice.objects.filter(model__in=DEFAULT_PRICES).values_list("model", flat=True))
    missing = [ModelPrice(model=model, input_per_1k=Decimal(inp), output_per_1k=Decimal(out),
                          effective_from=datetime(2000, 1, 1, tzinfo=UTC))
               for model, (inp, out) in DEFAULT_PRICES.items() if model not in priced]
    if missing:
        ModelPrice.objects.bulk_create(missing)
        RULES.bump()  # bulk_create sends no signals
