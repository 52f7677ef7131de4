"""Money parsing, price validation, token rate limits and the admin pages."""

import asyncio
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from billing.models import ModelPrice
from billing.money import cost_usd, nanos_per_token, parse_amount, usd_to_nanos
from billing.ratelimit import consume_tokens
from tests.billing.conftest import rid


def test_money_is_exact_integers_and_decimals():
    assert nanos_per_token(Decimal("0.00015")) == 150
    assert nanos_per_token(Decimal("0.0000000001")) == 1  # rounded up: never charge a token as free
    assert cost_usd(1) == Decimal("0.000000001") and cost_usd(10**9) == Decimal(1)
    assert usd_to_nanos(Decimal("0.0000000019")) == 1  # limits round down
    assert parse_amount(0.1, field="x", allow_zero=False) == Decimal("0.1")  # what the client wrote
    assert parse_amount("1.50000000000000000000", field="x", allow_zero=False) == Decimal("1.5")
    for bad in ("nan", "inf", "-1", "1e400", "0.00000000001", True, None, "", "1,5"):
        with pytest.raises(ValueError):
            parse_amount(bad, field="x", allow_zero=False, maximum=Decimal(10**6))


@pytest.mark.django_db
@pytest.mark.parametrize("inp, out", [("0", "0"), ("-0.001", "0.002"), ("0.00000000000000000001", "0.001"),
                                      ("NaN", "0.001"), ("1001", "1")])
def test_bad_prices_are_validation_errors_and_write_nothing(inp, out):
    price = ModelPrice(model="new-model", input_per_1k=Decimal(inp), output_per_1k=Decimal(out))
    with pytest.raises(ValidationError):
        price.full_clean()
    assert not ModelPrice.objects.filter(model="new-model").exists()


@pytest.mark.django_db
def test_the_database_refuses_free_or_negative_prices_too():
    for inp, out in (("0", "0"), ("-1", "1")):
        with pytest.raises(IntegrityError), transaction.atomic():
            ModelPrice.objects.create(model="free", input_per_1k=Decimal(inp), output_per_1k=Decimal(out))


@pytest.mark.django_db
def test_seeded_prices():
    seeded = {p.model: (p.input_per_1k, p.output_per_1k) for p in ModelPrice.objects.all()}
    assert seeded["gpt-4o"] == (Decimal("0.005"), Decimal("0.015"))
    assert seeded["gpt-4o-mini"] == (Decimal("0.00015"), Decimal("0.0006"))
    assert seeded["gpt-4o-vision"] == (Decimal("0.01"), Decimal("0.03"))
    assert seeded["local-mini"] == (Decimal("0.0001"), Decimal("0.0002"))
    assert seeded["local-large"] == (Decimal("0.0005"), Decimal("0.0015"))


def test_token_rate_limit_refills_over_a_minute():
    key = rid()

    async def scenario():
        assert await consume_tokens(key, 600, 1000, now=100.0) == (True, 0, 400)
        allowed, retry, remaining = await consume_tokens(key, 500, 1000, now=100.0)
        assert (allowed, remaining) == (False, 400) and retry == 6  # 100 tokens at 1000/60 per second
        assert (await consume_tokens(key, 500, 1000, now=106.0))[0]
        assert (await consume_tokens(key, 5000, 1000, now=500.0))[:2] == (False, 60)  # never fits
        assert await consume_tokens(key, 10**9, None) == (True, 0, None)

    asyncio.run(scenario())


@pytest.mark.django_db
def test_admin_pages_load(client, users):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("root", "root@example.com", "x" * 20)
    client.force_login(root)
    for name in ("modelprice", "usagerecord", "budget", "budgetalert"):
        assert client.get(f"/admin/billing/{name}/").status_code == 200, name
    assert client.get("/admin/billing/modelprice/add/").status_code == 200
