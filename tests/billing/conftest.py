"""Billing fixtures: the ledger under test (in-process and Redis) and small builders."""

import asyncio
import uuid
from decimal import Decimal

import pytest
from django.conf import settings

import billing.ledger as ledger_module
from billing.ledger import InProcessLedger, key_prefix
from tests.conftest import require_redis

LEDGERS = ["inprocess", "redis"]


def make_ledger(kind: str):
    if kind == "inprocess":
        return InProcessLedger()
    require_redis()
    from billing.ledger_redis import RedisLedger

    # A prefix per test on top of the worker's: tests never see each other's counters.
    return RedisLedger(settings.REDIS_URL, key_prefix() + uuid.uuid4().hex[:8] + ":")


@pytest.fixture(params=LEDGERS)
def ledger(request):
    """A fresh ledger of each implementation, installed as the process's ledger."""
    instance = make_ledger(request.param)
    previous = ledger_module._ledger
    ledger_module._ledger = instance
    yield instance
    ledger_module._ledger = previous
    if hasattr(instance, "clear"):
        asyncio.run(instance.clear())


def rid() -> str:
    return uuid.uuid4().hex


def make_budget(organization, *, scope="organization", target=None, period="monthly", limit_usd="1", hard=True,
                thresholds=()):
    from billing.models import Budget

    fields = {scope: target} if scope != "organization" else {}
    return Budget.objects.create(organization=organization, scope=scope, period=period,
                                 limit_usd=Decimal(str(limit_usd)), hard=hard, alert_thresholds=list(thresholds),
                                 **fields)


def seed_prices():
    """Transactional tests flush the tables the data migration seeded: put the prices back."""
    import importlib

    from billing.models import ModelPrice

    seed = importlib.import_module("billing.migrations.0002_seed_prices")
    for model, (inp, out) in seed.SEED.items():
        ModelPrice.objects.get_or_create(model=model, effective_from=seed.EPOCH,
                                         defaults={"input_per_1k": Decimal(inp), "output_per_1k": Decimal(out)})


@pytest.fixture
def prices(db):
    seed_prices()


@pytest.fixture
def sql(monkeypatch):
    """The statements sent on any thread (the hot path's writes run on the DB pool), one per round trip."""
    from django.db.backends import utils

    seen, execute = [], utils.CursorWrapper._execute

    def recording(self, query, *args):
        seen.append(query)
        return execute(self, query, *args)

    monkeypatch.setattr(utils.CursorWrapper, "_execute", recording)
    return seen
