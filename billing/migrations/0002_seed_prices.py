"""Seed the price table (docs/design.md section 3) plus the embedded engine's models.

Effective from the epoch so requests at any time find a price; later changes are new rows.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

SEED = {
    "gpt-4o": ("0.005", "0.015"),
    "gpt-4o-mini": ("0.00015", "0.0006"),
    "gpt-4o-vision": ("0.01", "0.03"),
    "local-mini": ("0.0001", "0.0002"),
    "local-large": ("0.0005", "0.0015"),
}
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for model, (inp, out) in SEED.items():
        ModelPrice.objects.get_or_create(model=model, effective_from=EPOCH,
                                         defaults={"input_per_1k": Decimal(inp), "output_per_1k": Decimal(out)})


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    ModelPrice.objects.filter(model__in=SEED, effective_from=EPOCH, usage__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
