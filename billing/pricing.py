"""Model prices: effective-dated rows, the newest one in effect wins."""

from datetime import datetime

from billing.models import ModelPrice


class UnknownModel(Exception):
    """No price exists for the model (400 `unknown_model`)."""

    def __init__(self, model: str):
        super().__init__(f"No price is configured for model {model!r}; an admin can add one under Model prices.")
        self.model = model


def current_price(model: str, now: datetime) -> ModelPrice:
    price = (ModelPrice.objects.filter(model=model, effective_from__lte=now)
             .order_by("-effective_from").first())
    if price is None:
        raise UnknownModel(model)
    return price


# The seed of DESIGN.md section 3 (the migration keeps its own frozen copy).
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
    ModelPrice.objects.bulk_create(
        ModelPrice(model=model, input_per_1k=Decimal(inp), output_per_1k=Decimal(out),
                   effective_from=datetime(2000, 1, 1, tzinfo=UTC))
        for model, (inp, out) in DEFAULT_PRICES.items() if model not in priced
    )
