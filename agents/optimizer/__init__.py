"""The cost optimizer: model routing, the response cache and context trimming, for the runner.

`plan(req, agent, model, history)` (in the runner: `decide`, then `look_up_soon`, whose answer a run
has before anything is reserved, or where nothing is, before the model is asked) decides, per
organization's `OptimizerSettings` (no row: everything on):

- routing (`classifier` + `routing`): when the caller named no model, a `simple` query runs on
  the cheapest model it may use and anything else on the strongest. A named model is never changed.
- trimming (`trimming`): history beyond the organization's token budget is dropped, oldest first.
- caching (`cache`, `keys`): a question without earlier turns, attachment or client tools, not
  opted out with `cache: false` and not sampled (temperature > 0), is looked up by exact match
  under `keys.answer_key` — the one function that decides what a key holds (agent, model,
  question, the documents the caller may read when the agent's tools read documents, ...); an
  answer it cannot key is not cached. The documents are read only when a stored answer to the
  question may exist (`keys.PendingKey`'s probe), or when an answer is stored. A hit is replayed by the runner at zero cost
  (`free_charge`) and recorded as `cached`. `remember` stores complete, untruncated answers of
  cache misses.

`bench/cost_optimizer.py` drives the same classifier, router and cache on a workload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

from django.utils import timezone

from agents.core import PER_CALLER
from agents.optimizer.cache import cache_key, get_cache
from agents.optimizer.classifier import classify
from agents.optimizer.keys import AnswerKey, PendingKey, answer_key
from agents.optimizer.routing import load_candidates, pick_model
from agents.optimizer.trimming import trim_history, trim_messages
from relay.eventloop.db import run_db

__all__ = ["Plan", "plan", "look_up", "look_up_soon", "free_of", "replay", "remember", "free_charge", "classify", "pick_model", "cache_key"]


@dataclass
class Plan:
    model: object                          # agents.providers.catalog.ModelChoice to run on
    history: list[dict] = field(default_factory=list)
    raw_messages: list[dict] | None = None
    label: str | None = None               # the classifier's label when routing ran
    key: AnswerKey | PendingKey | None = None  # set when the request may use the cache
    probe: str | None = None               # a PendingKey's probe, marked when its answer is stored
    cache_ttl: int = 0
    cached_answer: str | None = None       # a cache hit: the runner replays it

    @property
    def hit(self) -> bool:
        return self.cached_answer is not None

    @property
    def cache_key(self) -> str | None:
        """The whole key (None while it waits for the caller's documents, or when not cached)."""
        return self.key.value if isinstance(self.key, AnswerKey) else None

    def complete_key(self) -> None:
        """Read the caller's documents into a pending key (sync ORM code, for a DB thread)."""
        if isinstance(self.key, PendingKey):
            self.key = self.key.complete()


_SETTINGS_SECONDS = 10.0
_settings_cache: dict = {}


def forget_settings(**kwargs) -> None:
    """Drop this process's copies (settings changed here; other processes wait out the TTL)."""
    _settings_cache.clear()


def _settings(organization_id):
    """The organization and its switches, read at most every few seconds: every model call asks."""
    from accounts.models import Organization
    from billing.models import OptimizerSettings

    cached = _settings_cache.get(organization_id)
    if cached is not None and time.monotonic() - cached[0] < _SETTINGS_SECONDS:
        return cached[1]
    organization = Organization.objects.select_related("optimizer_settings").filter(pk=organization_id).first()
    switches = getattr(organization, "optimizer_settings", None) if organization else None
    result = (organization, switches or OptimizerSettings())
    _settings_cache[organization_id] = (time.monotonic(), result)
    return result


def decide(req, agent, model, history) -> Plan:
    """The plan without the cache lookup: sync ORM code, for a DB thread."""
    from agents.providers.catalog import resolve

    organization, switches = _settings(req.user.organization_id)
    result = Plan(model=model, history=list(history), raw_messages=req.messages)
    if not req.model and switches.routing_enabled and not agent.needs_attachment:
        result.label = classify(req.query).label
        candidates = load_candidates(model, req.api_key, timezone.now())
        chosen = pick_model(result.label, candidates, model.name)
        if chosen != model.name:
            result.model = resolve(chosen) or model
    if switches.trimming_enabled:
        result.history = trim_history(result.history, switches.history_token_budget)
        if result.raw_messages:
            result.raw_messages = trim_messages(result.raw_messages, switches.history_token_budget)
    if switches.cache_enabled and organization is not None:
        tenant = f"{organization.pk}.{int(organization.created_at.timestamp() * 1_000_000)}"
        result.key = answer_key(req, agent, result.model.name, history, tenant)
        result.probe = result.key.probe if isinstance(result.key, PendingKey) else None
        result.cache_ttl = switches.cache_ttl_seconds
    return result


async def plan(req, agent, model, history: list[dict], decided: Plan | None = None) -> Plan:
    """Route, trim and look up the cache for one request (one DB round trip + one cache read;
    when an answer to the question is stored, another DB trip for the caller's documents and
    another cache read).

    decided: `decide(...)` already made by the caller on a DB thread (saving the round trip).
    """
    return await look_up(decided or await run_db(decide, req, agent, model, history))


def look_up_soon(result: Plan) -> asyncio.Task | None:
    """`look_up(result)` started now, for the caller to await when it needs the answer (None: the
    plan looks nothing up). Its trip then overlaps what the caller does meanwhile."""
    if result.probe is None and result.cache_key is None:
        return None
    return asyncio.ensure_future(look_up(result))


async def look_up(result: Plan) -> Plan:
    """The cache's answer to a decided plan, in `result.cached_answer` (a miss leaves it None)."""
    if result.probe is not None:
        if not await get_cache().has(result.probe):
            return result  # no answer to this question is stored in the tenant: a miss, no documents read
        await run_db(result.complete_key)
    if result.cache_key:
        result.cached_answer = await get_cache().get(result.cache_key)
    return result


async def replay(answer: str):
    """A cache hit as the runner's token source: the stored text, split into tokens by the runner."""
    yield answer


async def remember(result: Plan | None, status: str, answer: str, facts: dict) -> None:
    """Store a finished answer: complete, not itself a cache hit, not cut off at max_tokens, not
    shaped by the caller's permissions, and read from no document its key does not cover."""
    if result is None or result.key is None or result.hit or status != "complete":
        return
    if facts.get("finish_reason") == "length" or facts.get(PER_CALLER):
        return
    # A key completed only now holds the documents the caller may read now: an answer that read one
    # unshared meanwhile is not stored (admits), one shared meanwhile is stored for those who see it.
    if isinstance(result.key, PendingKey):
        await run_db(result.complete_key)
    if not result.key.admits(facts):
        return
    if await get_cache().put(result.cache_key, answer, result.cache_ttl) and result.probe is not None:
        await get_cache().mark(result.probe, result.cache_ttl)


def free_of(charge):
    """A charge nothing was reserved for, priced at zero: what a cache hit is billed."""
    if charge.reserved:
        raise ValueError("A reservation is settled or released, not repriced.")
    return dataclasses.replace(charge, input_nanos_per_token=0, output_nanos_per_token=0)


async def free_charge(*, request_id: str, user, model: str):
    """The charge of a cache hit: priced at zero per token, nothing reserved, still one UsageRecord."""
    from billing.pricing import current_price
    from billing.services import UNLIMITED, Charge

    now = timezone.now()
    price = await run_db(current_price, model, now)
    return Charge(request_id=request_id, model=price.model, price_id=price.pk, input_nanos_per_token=0,
                  output_nanos_per_token=0, granted_nanos=UNLIMITED, organization_id=user.organization_id,
                  team_id=user.team_id, opened_at=now)
