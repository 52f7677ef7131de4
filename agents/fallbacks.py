"""When a model cannot answer: its fallbacks, each reserved at its own price before it is asked.

A model's deployments are tried by `agents.router.calls`; when none of them could start the
answer (`ModelUnavailable`), the model's ordered `fallbacks` are tried in turn, and an upstream's
context-window refusal moves to the model's `context_window_fallback`. Only before anything was
produced: once a token or a tool call reached the caller, the run stays with its model, and an
error then ends it (billed for what was produced).

Each switch gives the reservation back and reserves the worst case again at the new model's
price before the new model is asked, so the budget is exact whichever model answers; the usage
record, the stored answer and the `usage` event name the model that answered. A key limited to
some models never falls back to one it may not use.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

from django.utils import timezone

from accounts import key_tree
from agents.providers.base import ProviderError
from agents.providers.catalog import resolve
from agents.rounds import Rounds
from agents.router import metrics as router_metrics
from agents.router.calls import ModelUnavailable
from agents.upstream import answer_with_model, first_input_tokens
from billing import services as billing
from relay.eventloop.db import db

logger = logging.getLogger(__name__)


async def answer(run, progress):
    """The run's answer from its model, or from the first fallback that can give it."""
    asked = run.model
    while True:
        source = _answer_of(run, progress)
        try:
            async with aclosing(source):
                async for item in source:
                    yield item
            return
        except ModelUnavailable as unavailable:
            error, reason, candidates = unavailable.error, "unavailable", asked.fallbacks
        except ProviderError as failure:
            if failure.code != "context_window_exceeded" or not run.model.context_window_fallback:
                raise
            error, reason, candidates = failure, "context_window", (run.model.context_window_fallback,)
        if progress.output_tokens or run.ctx.tool_records:
            raise error  # something reached the caller: never switched
        taken = {asked.name, *(switch["to"] for switch in run.fallbacks)}
        await _switch(run, [name for name in candidates if name not in taken], reason, error)


def _answer_of(run, progress):
    if run.model.is_local:
        return run.agent.answer_locally(run.ctx)
    ahead = run.ahead.unclaimed_for(run.model) if run.ahead is not None else None
    return answer_with_model(run.agent, run.ctx, run.model, run.max_tokens, run.request.temperature,
                             input_tokens=run.input_tokens, rounds=Rounds(run, progress), ahead=ahead)


async def _switch(run, candidates: list[str], reason: str, error: ProviderError) -> None:
    """Move the run to the first usable candidate, re-reserved at its price; else raise `error`."""
    now = timezone.now()
    for name in candidates:
        found = await db(_usable)(run, name, now)
        if found is None:
            continue
        model, rules = found
        # Its first call's prompt, as this model is sent it: the agent's tools go only to a model that takes them.
        input_tokens = first_input_tokens(run.agent, run.ctx, model)
        await billing.release_charge(run.charge)
        try:
            charge = await billing.open_charge(
                request_id=run.request.run_id, user=run.request.user, api_key=run.request.api_key,
                model=model.name, input_tokens=input_tokens, max_output_tokens=run.max_tokens, now=now,
                rules=rules)
        except billing.LedgerUnavailable:
            run.unreserved = True
            raise ProviderError("ledger_unavailable", "The budget ledger is unavailable; try again shortly.",
                                503) from None
        except BaseException:  # BudgetExceeded ends the run as a budget stop (agents.runner)
            run.unreserved = True
            raise
        run.fallbacks.append({"from": run.model.name, "to": model.name, "reason": reason, "error": error.code})
        router_metrics.record_fallback(run.model.name, model.name, reason)
        run.model, run.charge, run.input_tokens = model, charge, input_tokens
        return
    raise error


def _usable(run, name: str, now):
    """(model, its price and budgets) when the run may fall back to `name`; None otherwise."""
    model = resolve(name)
    if model is None:
        return None
    if not key_tree.permits(run.request.api_key, "allowed_models", model.name):
        return None
    try:
        return model, billing.load_rules(model.name, run.request.user, run.request.api_key, now)
    except billing.UnknownModel:
        logger.warning("fallback %s of %s has no price: skipped", name, run.model.name)
        return None
