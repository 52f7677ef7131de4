"""One agent run, from checks to stored answer: the hot path of docs/design.md section 11.

`prepare` does everything that can refuse a request (agent, permission, model, conversation,
budget reservation) so that refusals are plain 4xx before any stream starts. `stream` then
yields the protocol events of docs/design.md section 6 and, however it ends (complete, error,
budget stop, or the client going away), stores the answer and its one usage record: on the
production server after the client has the answer's end (`_finish`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions

from accounts import key_tree
from agents import charging, deadlines, events, fallbacks, heavy, optimizer, router
from agents.actions import runs
from agents.core import RunContext
from agents.history import _id, load_history
from agents.providers.base import ProviderError, TextDelta, ToolCallRequest
from agents.providers.catalog import ModelChoice, resolve
from agents.registry import get_agent, may_use
from agents.rounds import BudgetStop
from agents.tokenizer import split_tokens
from agents.upstream import first_input_tokens
from billing import ratelimit
from billing import services as billing
from billing.money import cost_usd, usd_to_nanos
from relay.eventloop import unfinished
from relay.eventloop.db import db
from relay.eventloop.later import later, settled
from relay.observability import metrics

logger = logging.getLogger(__name__)
MAX_OUTPUT_TOKENS = 32768
DEFAULT_MAX_TOKENS = 1024


@dataclass
class RunRequest:
    user: object
    api_key: object
    agent: str
    query: str
    conversation_id: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    attachment: bytes | None = None
    history: list[dict] | None = None        # earlier turns given by the client (instead of a conversation)
    messages: list[dict] | None = None       # OpenAI-compatible API: the client's whole conversation
    client_tools: list[dict] | None = None   # OpenAI-compatible API: tools passed through to the model
    cache: bool = True                       # False: neither read nor fill the response cache
    client_request_id: str = ""              # the client's X-Request-ID: a correlation label, never an identity
    regenerate: str | None = None            # an answer of the conversation to answer again, as a sibling version
    edit: str | None = None                  # a question of the conversation that `query` replaces, as a sibling
    parent: str | None = None                # the message a new question follows (default: the latest)
    # Where the new turn hangs in the conversation's tree, found with the history (agents.history):
    follows: str | None = field(default=None, init=False)  # the message the new question follows
    answers: str | None = field(default=None, init=False)  # regenerate: the stored question answered again
    # The server names its runs: the ledger reservation, the usage record and the audit event use this id.
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()), init=False)
    # (when, what _prepare_reads found), read ahead on the thread that admitted the request (read_ahead).
    reads: tuple | None = field(default=None, init=False, repr=False)


def new_request(user, api_key, data: dict, *, client_request_id: str = "", **extra) -> RunRequest:
    """The one request builder: a run for an admitted caller from a validated body (QuerySerializer's shape).

    Every transport builds its runs here (/api/v1/query and /stream, /v1/chat/completions, the
    WebSocket); `extra` carries what only the OpenAI-compatible API has (messages, client tools).
    """
    return RunRequest(
        user=user, api_key=api_key, agent=data["agent_type"], query=data["query"],
        conversation_id=str(data["conversation_id"]) if data.get("conversation_id") else None,
        model=data.get("model") or None, max_tokens=data.get("max_tokens"), temperature=data.get("temperature"),
        # A regenerated answer is a new run of the model, billed as one: never the cached answer again.
        cache=data.get("cache", True) and not data.get("regenerate"), attachment=data.get("image"),
        regenerate=_id(data.get("regenerate")), edit=_id(data.get("edit")), parent=_id(data.get("parent")),
        client_request_id=client_request_id,
        **extra,
    )


@dataclass
class PreparedRun:
    request: RunRequest
    agent: object
    model: ModelChoice
    ctx: RunContext
    charge: billing.Charge
    input_tokens: int  # of every model call sent so far (agents.rounds counts a tool round's)
    max_tokens: int
    conversation_id: str = ""
    message_id: str = ""
    started: float = field(default_factory=time.monotonic)
    outcome: tuple | None = None  # (status, total tokens, cost) once stored
    plan: optimizer.Plan | None = None  # the cost optimizer's decisions (routing, trimming, cache)
    remaining_tokens: int | None = None  # the key's tokens/minute left, for X-RateLimit-Remaining-Tokens
    replay: tuple | None = None  # (Message, UsageRecord) of an earlier run answered again (agents.idempotency)
    fallbacks: list[dict] = field(default_factory=list)  # {"from", "to", "reason"} for each model switch
    # Bill nothing: no model was asked (abandon), or a fallback's reservation failed after the first was given back.
    unreserved: bool = False
    call_tokens: int = 0  # output the model wrote in tool calls (not streamed, still billed)
    ahead: router.Ahead | None = None  # the first attempt's deployment, acquired during the reservation and opening
    take_over: Callable[[], None] = lambda: None  # the closing is this code's now, not the request's end


def _check_request(req: RunRequest):
    agent = get_agent(req.agent)
    if agent is None:
        raise exceptions.ValidationError({"agent_type": [f"Unknown agent {req.agent!r}."]})
    if not may_use(req.user, req.api_key, req.agent):
        raise exceptions.PermissionDenied(f"You may not use the {req.agent} agent.")
    model = resolve(req.model)
    if model is None:
        if req.messages is not None:  # the OpenAI-compatible API answers an unknown model as OpenAI does
            raise exceptions.NotFound(f"The model {req.model!r} does not exist.")
        raise exceptions.ValidationError({"model": [f"Unknown model {req.model!r}."]})
    if not key_tree.permits(req.api_key, "allowed_models", model.name):
        raise exceptions.PermissionDenied(f"This API key may not use the model {model.name}.")
    if agent.needs_attachment and not req.attachment:
        raise exceptions.ValidationError({"image": ["The vision agent needs an image."]})
    return agent, model


def _prepare_reads(req: RunRequest, now):
    """Everything prepare reads, in one trip to the DB threads: each hop costs time before the first token.

    The checks, the history, the optimizer's decision and the chosen model's price and budgets
    (None when the model has no price: open_charge then raises UnknownModel itself).
    """
    agent, model = _check_request(req)
    history = load_history(req)
    decided = optimizer.decide(req, agent, model, history)
    try:
        rules = billing.load_rules(decided.model.name, req.user, req.api_key, now)
    except billing.UnknownModel:
        rules = None
    return agent, model, history, decided, rules


def read_ahead(req: RunRequest) -> RunRequest:
    """prepare's reads done now, by a caller already on a DB thread (the trip that admitted the
    request, relay.api.async_views' prelude): prepare then makes no trip of its own before the
    reservation. Not for a turn of a stored conversation, whose history may still be committing
    (prepare waits for it first). Sync."""
    if not req.conversation_id:
        now = timezone.now()
        req.reads = (now, _prepare_reads(req, now))
    return req


async def prepare(req: RunRequest) -> PreparedRun:
    """All checks and the budget reservation; raises DRF exceptions (4xx/5xx envelopes)."""
    lease = await heavy.admit_run(req)  # 429 busy before anything else; released in _finish
    try:
        run = await _prepare(req)
    except BaseException:
        await asyncio.shield(heavy.release(lease))
        raise
    run.ctx.heavy_lease = lease
    # Closed by its stream; if the request ends before that starts (the client gone while the
    # response is built or its headers sent), by the handler (relay.eventloop.unfinished).
    run.take_over = unfinished.register(functools.partial(abandon, run))
    return run


async def _prepare(req: RunRequest) -> PreparedRun:
    if req.reads is not None:
        now, (agent, model, history, decided, rules) = req.reads
    else:
        if req.conversation_id:  # a turn answered on this instance a moment ago may still be committing
            await settled(req.conversation_id)
        now = timezone.now()
        agent, model, history, decided, rules = await db(_prepare_reads)(req, now)
    # Cost optimizer (agents/optimizer): may route an unnamed model by complexity and trims long
    # histories; its response cache lookup (a Redis trip) goes out now, beside what follows.
    plan = decided or await db(optimizer.decide)(req, agent, model, history)
    lookup = optimizer.look_up_soon(plan)
    try:
        return await _reserve_and_open(req, agent, plan, lookup, now, rules)
    except BaseException:
        if lookup is not None:
            lookup.cancel()  # it only reads; ended already, its error is the request's no more
            if lookup.done() and not lookup.cancelled():
                lookup.exception()
        raise


async def _reserve_and_open(req: RunRequest, agent, plan: optimizer.Plan, lookup: asyncio.Task | None, now,
                            rules) -> PreparedRun:
    """The rate limit, the reservation and the opening of a planned run.

    A cached answer needs no reservation, so where one will be made the cache's answer is awaited
    first; where none will be (no budget covers the request), the opening, which is the same for a
    hit as for a miss, commits meanwhile and the answer is awaited after it, before the model is asked.
    """
    if lookup is not None and charging.reserves(rules):
        await lookup
        lookup = None
    model = plan.model
    ctx = RunContext(query=req.query, user=req.user, api_key=req.api_key, history=plan.history,
                     attachment=req.attachment, raw_messages=plan.raw_messages, client_tools=req.client_tools)
    max_tokens = min(max(int(req.max_tokens or DEFAULT_MAX_TOKENS), 1), MAX_OUTPUT_TOKENS)
    # The tools offered go to the model with the messages: they are input, reserved and rate-limited as such.
    input_tokens = first_input_tokens(agent, ctx, model)
    remaining_tokens = await ratelimit.admit(req.api_key, input_tokens, max_tokens)  # 429 rate_limited
    # The first attempt's deployment is acquired while the reservation and the opening are made: its
    # round trip overlaps theirs instead of following them. Acquiring asks no model; if the run is
    # refused, or answered from the cache, the lease is given back, neutral.
    ahead = router.Ahead(model, tokens=input_tokens) if not plan.hit and model.deployments else None
    try:
        charge = await charging.open_charge(req, agent, plan, input_tokens, max_tokens, now, rules)
    except BaseException:
        if ahead is not None:
            await asyncio.shield(ahead.drop())
        raise
    run = PreparedRun(request=req, agent=agent, model=model, ctx=ctx, charge=charge, input_tokens=input_tokens,
                      max_tokens=max_tokens, plan=plan, remaining_tokens=remaining_tokens,
                      conversation_id=req.conversation_id or str(uuid.uuid4()), message_id=str(uuid.uuid4()),
                      ahead=ahead)
    # The question and the running answer are stored before the model is asked: if the database
    # cannot take them, the request fails here (503) instead of streaming an answer nobody can
    # bill, and an instance killed mid-stream leaves a row for the periodic job to mark.
    try:
        await runs.open_run(runs.Opening(req, run.conversation_id, run.message_id, agent.name, model.name))
    except BaseException:
        if run.ahead is not None:
            await asyncio.shield(run.ahead.drop())
        await asyncio.shield(billing.release_charge(charge))
        raise
    if lookup is not None:
        await _answer_from_cache_after_opening(run, lookup)
    return run


async def _answer_from_cache_after_opening(run: PreparedRun, lookup: asyncio.Task) -> None:
    """The cache's answer to a run no budget covers, once its rows are written: a hit is priced at
    zero (nothing was reserved) and gives back the deployment acquired for a miss. A lookup that
    fails, or a client gone meanwhile, closes the run as one that asked no model (its rows exist)."""
    try:
        hit = (await lookup).hit
    except BaseException as error:
        gone = isinstance(error, asyncio.CancelledError)
        await asyncio.shield(abandon(run, "cancelled" if gone else "error", "" if gone else "agent_error"))
        raise
    if hit:
        run.charge = optimizer.free_of(run.charge)
        if run.ahead is not None:
            ahead, run.ahead = run.ahead, None
            await asyncio.shield(ahead.drop())


@dataclass
class _Progress:
    answer: list[str] = field(default_factory=list)
    output_tokens: int = 0
    ttft_ms: int | None = None
    status: str = "complete"
    error_code: str = ""


async def stream(run: PreparedRun):
    """Yield the run's protocol events; the answer is stored however the stream ends."""
    if run.replay is not None:
        for event in _replayed_events(run):
            yield event
        return
    run.take_over()
    try:
        yield events.start(run.conversation_id, run.message_id, run.agent.name, run.model.name)
    except BaseException:  # the client left at the first event (GeneratorExit, cancel): no run is left open
        await asyncio.shield(abandon(run))
        raise
    progress = _Progress()
    failure = None
    try:
        async for event in _produce(run, progress):
            yield event
    except (asyncio.CancelledError, GeneratorExit):
        progress.status = "cancelled"
        await asyncio.shield(_finish(run, progress))
        raise
    except Exception as error:  # noqa: BLE001  (told to the client below, then closed as it ended)
        failure = _failure_event(run, progress, error)
    if failure is not None:
        try:
            yield failure
        except BaseException:  # the client left while told: the run still closes as it ended, its tokens billed
            await asyncio.shield(_finish(run, progress))
            raise
    usage = await asyncio.shield(_finish(run, progress))
    yield events.usage(usage.input_tokens, usage.output_tokens, usage.cost, run.model.name)
    yield events.done(progress.status, usage.input_tokens + usage.output_tokens, usage.cost)


def _failure_event(run: PreparedRun, progress: _Progress, error: Exception) -> dict:
    """The error event of a run that failed; sets the status it is stored with."""
    if isinstance(error, (BudgetStop, billing.BudgetExceeded)):  # the latter: a fallback's reservation refused
        progress.status, progress.error_code = "budget_stop", "budget_exceeded"
        blocking = run.charge.blocking_budget()
        return events.error("budget_exceeded", error.message or (blocking.message if blocking else
                                                                 "The budget is used up."))
    if isinstance(error, ProviderError):
        progress.status, progress.error_code = "error", error.code
        return events.error(error.code, error.message)
    if isinstance(error, deadlines.RunTimeout):
        progress.status, progress.error_code = "error", "run_timeout"
        return events.error("run_timeout", f"The answer was stopped after {deadlines.limits()[0]:g} s, the longest "
                                           "a run may last here; what it said so far is billed.")
    logger.error("agent %s failed (run %s)", run.agent.name, run.request.run_id, exc_info=error)
    progress.status, progress.error_code = "error", "agent_error"
    return events.error("agent_error", "The agent failed unexpectedly; the error has been logged.")


async def abandon(run: PreparedRun, status: str = "cancelled", error_code: str = "") -> None:
    """Close a prepared run that no model was asked for (its client left, or binding it failed):
    stored with `status`, billed nothing, its reservation and admission given back now rather than
    at their TTL."""
    run.take_over()
    run.unreserved = True
    await _finish(run, _Progress(status=status, error_code=error_code))


def replayed(request: RunRequest, message) -> PreparedRun:
    """The run an Idempotency-Key already started, answered again from its stored rows (sync: reads them)."""
    from billing.models import UsageRecord

    request.run_id = message.request_id
    record = UsageRecord.objects.filter(request_id=message.request_id).first()
    return PreparedRun(
        request=request, agent=get_agent(message.agent), model=ModelChoice(name=message.model, kind="stored"),
        ctx=RunContext(query=request.query, user=request.user, api_key=request.api_key), charge=None,
        input_tokens=message.input_tokens, max_tokens=0, conversation_id=str(message.conversation_id),
        message_id=str(message.pk), replay=(message, record))


def _replayed_events(run: PreparedRun):
    message, record = run.replay
    yield events.start(run.conversation_id, run.message_id, message.agent, message.model)
    if message.content:
        yield events.token(message.content)
    if message.error_code:
        yield events.error(message.error_code, f"The run ended with {message.error_code}.")
    counted = record or message
    cost = cost_usd(usd_to_nanos(counted.cost))  # as the run first said it (the column's scale differs)
    yield events.usage(counted.input_tokens, counted.output_tokens, cost, message.model)
    yield events.done(message.status, counted.input_tokens + counted.output_tokens, cost)


async def _produce(run: PreparedRun, progress: _Progress):
    hit = run.plan is not None and run.plan.hit
    # the response cache replays with no model call; a model answers through its fallbacks
    source = optimizer.replay(run.plan.cached_answer) if hit else fallbacks.answer(run, progress)
    local_delay = 0 if hit else settings.RELAY_LOCAL_TOKEN_DELAY_MS / 1000
    deadline = run.started + deadlines.limits()[0]
    async with aclosing(source):
        async for item in source:
            if deadlines.now() > deadline:
                raise deadlines.RunTimeout()
            if isinstance(item, dict):
                yield item
                continue
            if isinstance(item, ToolCallRequest):  # for the client to run (OpenAI-compatible API)
                yield {"type": "client_tool_call", "call_id": item.call_id, "name": item.name,
                       "arguments": item.arguments}
                continue
            if isinstance(item, TextDelta) and item.tokens > 1 and _passes_whole(run, progress, item):
                yield events.token(item.text)  # a whole answer's text passes on in one piece
                continue
            pieces = [item.text] if isinstance(item, TextDelta) and item.tokens == 1 else \
                split_tokens(item.text if isinstance(item, TextDelta) else item)
            for piece in pieces:
                if progress.output_tokens >= run.max_tokens:
                    run.ctx.facts["finish_reason"] = "length"
                    return  # the local engine honours max_tokens like a model does
                if not run.charge.allows(run.input_tokens, run.call_tokens + progress.output_tokens + 1):
                    raise BudgetStop()
                progress.output_tokens += 1
                progress.answer.append(piece)
                if progress.ttft_ms is None:
                    progress.ttft_ms = int((time.monotonic() - run.started) * 1000)
                yield events.token(piece)
                if local_delay and run.model.is_local:  # the embedded engine paces itself like a model
                    await asyncio.sleep(local_delay)


def _passes_whole(run: PreparedRun, progress: _Progress, delta: TextDelta) -> bool:
    """Count a many-token delta at once when max_tokens and the budget allow all of it (else the caller
    splits it and stops inside it, token by token, exactly where it would have in a stream)."""
    if progress.output_tokens + delta.tokens > run.max_tokens or \
            not run.charge.allows(run.input_tokens, run.call_tokens + progress.output_tokens + delta.tokens):
        return False
    progress.output_tokens += delta.tokens
    progress.answer.append(delta.text)
    if progress.ttft_ms is None:
        progress.ttft_ms = int((time.monotonic() - run.started) * 1000)
    return True


@dataclass
class _Usage:
    input_tokens: int
    output_tokens: int
    cost: Decimal


async def _finish(run: PreparedRun, progress: _Progress) -> _Usage:
    """Close the run, once per run, whatever happened (agents.actions.runs).

    The ledger settles and holds the closing record in one step; then, on a serving loop and with
    the record durable, the closing transaction runs after the answer (relay.eventloop.later): the
    client's last events do not wait for the commit, and a process killed before it leaves the
    record for the periodic job and `reconcile` to write (agents.actions.recovery).
    """
    await heavy.release(run.ctx.heavy_lease)  # if no tool call used (and released) it
    if run.ahead is not None:  # no attempt took it (the client left before the model was asked): given back
        await run.ahead.drop()
    input_tokens, output_tokens = run.input_tokens, run.call_tokens + progress.output_tokens
    if run.unreserved:  # no model could be reserved: the request never ran anywhere it could be billed
        input_tokens = output_tokens = 0
    reported = run.ctx.facts.get("upstream_usage")
    if reported and reported["reported"] and not run.unreserved:
        if progress.status == "complete":
            input_tokens, output_tokens = reported["input_tokens"], reported["output_tokens"]
        else:  # the rounds the upstream finished and counted were spent, whatever cut the run short
            input_tokens = max(input_tokens, reported["input_tokens"])
            output_tokens = max(output_tokens, reported["output_tokens"])
    answer = "".join(progress.answer)
    quality = run.agent.quality(run.ctx, answer) if progress.status == "complete" else 0.0
    closing = await runs.settle_run(run, runs.Ending(
        status=progress.status, answer=answer, input_tokens=input_tokens, output_tokens=output_tokens,
        latency_ms=int((time.monotonic() - run.started) * 1000), quality=quality, ttft_ms=progress.ttft_ms,
        error_code=progress.error_code))
    commit = _commit(run, closing, progress.status, answer)
    record = closing.record
    if not (closing.held and later(commit, name=f"closing {run.request.run_id}", key=run.conversation_id,
                                   behind_answers=True)):
        record = await commit
    await metrics.refresh_known_models_if_stale()
    metrics.record_run(agent=run.agent.name, model=run.model.name, status=progress.status,
                       input_tokens=record.input_tokens, output_tokens=record.output_tokens, cost=record.cost,
                       quality=quality if progress.status == "complete" else None, ttft_ms=progress.ttft_ms)
    run.outcome = (progress.status, record.input_tokens + record.output_tokens, record.cost)
    return _Usage(record.input_tokens, record.output_tokens, record.cost)


async def _commit(run: PreparedRun, closing, status: str, answer: str):
    """The closing transaction; then the response cache may keep the answer (only once it is on the books)."""
    record = await runs.commit_run(closing)
    if not run.fallbacks:  # a fallback's answer is not the asked model's: never cached as its answer
        await optimizer.remember(run.plan, status, answer, run.ctx.facts)  # complete misses only
    return record


async def collect(run: PreparedRun) -> dict:
    """The whole run as one answer (the non-streaming API)."""
    answer, tool_calls, errors, final = [], [], [], {}
    async for event in stream(run):
        kind = event["type"]
        if kind == "token":
            answer.append(event["content"])
        elif kind == "tool_call" and event["status"] != "running":
            tool_calls.append(event)
        elif kind == "error":
            errors.append({"code": event["code"], "message": event["message"]})
        elif kind in ("usage", "done", "start"):
            final[kind] = event
    return {
        "conversation_id": run.conversation_id, "message_id": run.message_id, "agent": run.agent.name,
        "model": run.model.name, "answer": "".join(answer), "status": final["done"]["status"],
        "tool_calls": tool_calls, "errors": errors,
        "usage": {k: final["usage"][k] for k in ("input_tokens", "output_tokens", "cost")},
    }
