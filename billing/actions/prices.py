"""Model prices as edited in the admin: a price change is a new row; rows charged against stay."""

from __future__ import annotations

from django.db import transaction

from audit import actions
from audit.services import record
from billing.models import ModelPrice
from billing.money import decimal_text


def _metadata(price: ModelPrice) -> dict:
    return {"model": price.model, "input_per_1k": decimal_text(price.input_per_1k),
            "output_per_1k": decimal_text(price.output_per_1k),
            "effective_from": price.effective_from}


@transaction.atomic
def save_price(price: ModelPrice, *, actor=None) -> ModelPrice:
    created = price.pk is None
    price.save()
    record(actions.PRICE_CREATED if created else actions.PRICE_UPDATED, actor=actor,
           resource=f"model_price:{price.pk}", metadata=_metadata(price))
    return price


@transaction.atomic
def delete_price(price: ModelPrice, *, actor=None) -> None:
    """Only a price nothing was charged at (the admin offers no other); past usage keeps its row."""
    pk = price.pk
    price.delete()
    record(actions.PRICE_DELETED, actor=actor, resource=f"model_price:{pk}", metadata=_metadata(price))
