"""A planned run's charge, for agents.runner: what open_charge reserves, and its refusals as API errors."""

from __future__ import annotations

from rest_framework import exceptions

from agents import optimizer
from billing import services as billing
from billing.api.errors import BudgetExceededError, LedgerUnavailableError
from relay.observability import metrics


def reserves(rules) -> bool:
    """Whether open_charge will reserve (a budget covers the request; unknown until read: assume so)."""
    return rules is None or bool(rules[1])


async def open_charge(req, agent, plan, input_tokens: int, max_tokens: int, now, rules) -> billing.Charge:
    """The run's charge: its reservation, or a cache hit's zero-priced one; billing's refusals as API errors."""
    model = plan.model
    try:
        if plan.hit:  # a cached answer costs nothing: no reservation, a zero-priced charge
            return await optimizer.free_charge(request_id=req.run_id, user=req.user, model=model.name)
        return await billing.open_charge(request_id=req.run_id, user=req.user, api_key=req.api_key,
                                         model=model.name, input_tokens=input_tokens,
                                         max_output_tokens=max_tokens, now=now, rules=rules)
    except billing.BudgetExceeded as exceeded:
        metrics.record_refusal(agent=agent.name, reason="budget_exceeded", scope=exceeded.scope)
        raise BudgetExceededError(exceeded.message) from None
    except billing.UnknownModel as unknown:
        raise exceptions.ValidationError({"model": [str(unknown)]}) from None
    except billing.LedgerUnavailable:
        metrics.record_refusal(agent=agent.name, reason="ledger_unavailable")
        raise LedgerUnavailableError() from None
