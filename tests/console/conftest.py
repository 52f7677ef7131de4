"""Helpers for the console page tests: usage records in bulk, as many as a test needs."""

import uuid
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone


def add_usage(user, count: int, *, agent="math", model="local-mini", tools=("calculator",), days=5,
              span: timedelta | None = None, key=None, cost="0.0125"):
    """count usage records of user spread over the last `days` days (or `span`), each with its tool calls."""
    from billing.models import ModelPrice, ToolUsage, UsageRecord

    price = ModelPrice.objects.filter(model=model).first() or ModelPrice.objects.create(
        model=model, input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    now, span = timezone.now(), span or timedelta(days=days)
    records = UsageRecord.objects.bulk_create([
        UsageRecord(organization_id=user.organization_id, team_id=user.team_id, user=user, api_key=key, agent=agent,
                    model=model,
                    price=price, input_tokens=100, output_tokens=50, cost=Decimal(cost), status="complete",
                    complete=True, latency_ms=300, request_id=uuid.uuid4().hex,
                    created_at=now - span * i / max(count, 1))
        for i in range(count)
    ])
    ToolUsage.objects.bulk_create([ToolUsage(usage=r, tool=tool, duration_ms=12) for r in records for tool in tools])
    return records
