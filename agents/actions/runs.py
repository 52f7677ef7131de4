"""A run's writes: its opening rows before the model is asked, and the one transaction that closes it.

Both go through group commit (relay/eventloop/group_commit.py): concurrent runs reaching the same point
share one transaction of bulk statements, and a batch that fails is written again write by
write, so a bad write fails its own run only. Closing writes billing's usage record (through
billing's plain functions), the stored answer, and the `agent.run` audit event last; the
ledger settles after the commit (docs/design.md section 7).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.titles import summarise
from billing import services as billing
from billing.money import decimal_text
from relay.eventloop.group_commit import GroupCommit

# --- opening ----------------------------------------------------------------------------------


@dataclass
class Opening:
    """The rows a run starts with: its conversation (new or the caller's own), the question, an empty answer."""

    req: object  # agents.runner.RunRequest
    conversation_id: str
    message_id: str
    agent: str
    model: str


async def open_run(opening: Opening) -> None:
    """Store the question and the running answer (and a new conversation); raises if the database cannot."""
    await _OPENINGS.submit(opening)


def _turns(opening: Opening, conversation) -> list:
    from agents.models import Message

    req, asked = opening.req, timezone.now()
    question = None if req.answers else Message(
        id=uuid.uuid4(), conversation=conversation, role=Message.Role.USER, content=req.query, agent=opening.agent,
        parent_id=req.follows, request_id=req.run_id, client_request_id=req.client_request_id, created_at=asked)
    answer = Message(id=opening.message_id, conversation=conversation, role=Message.Role.ASSISTANT,
                     parent_id=req.answers or question.id, agent=opening.agent, model=opening.model,
                     status=Message.Status.RUNNING, request_id=req.run_id, client_request_id=req.client_request_id,
                     created_at=asked + timedelta(microseconds=1))  # the answer sorts after the question
    return [answer] if question is None else [question, answer]


def _conversation(opening: Opening, *, create: bool):
    from agents.models import Conversation

    req = opening.req
    if req.conversation_id:  # the caller's own, locked so turns of one conversation do not interleave
        conversation = Conversation.objects.select_for_update().get(pk=req.conversation_id, user=req.user)
        conversation.save(update_fields=["updated_at"])  # a new turn: the conversation moves up its list
        return conversation
    conversation = Conversation(id=opening.conversation_id, organization_id=req.user.organization_id, user=req.user,
                                agent=opening.agent, title=summarise(req.query))
    if create:
        conversation.save(force_insert=True)
    return conversation


def _open_one(write) -> None:
    from agents.models import Message

    with transaction.atomic():
        Message.objects.bulk_create(_turns(write.item, _conversation(write.item, create=True)))


def _open_many(writes) -> list:
    """Many runs' opening rows in one transaction: two bulk inserts."""
    from agents.models import Conversation, Message

    with transaction.atomic():
        conversations = [_conversation(write.item, create=False) for write in writes]
        Conversation.objects.bulk_create([c for c, w in zip(conversations, writes, strict=True)
                                          if not w.item.req.conversation_id])
        Message.objects.bulk_create([message for conversation, write in zip(conversations, writes, strict=True)
                                     for message in _turns(write.item, conversation)])
    return [None] * len(writes)


_OPENINGS = GroupCommit(_open_many, _open_one)

# --- closing ----------------------------------------------------------------------------------


@dataclass
class Ending:
    """How a run ended, as the runner measured it (tokens as billed: the upstream's count when it reported one)."""

    status: str
    answer: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    quality: float = 0.0
    ttft_ms: int | None = None
    error_code: str = ""


@dataclass
class _Closing:
    run: object  # agents.runner.PreparedRun
    ending: Ending
    record: object  # billing.models.UsageRecord, unsaved
    tool_calls: list[dict]


async def close_run(run, ending: Ending):
    """Record the run's usage, store its answer and write its `agent.run` event in one transaction.

    Then settles the budget reservation to the actual cost. Idempotent per run: closing it again
    returns the first usage record and writes nothing. Returns the UsageRecord.
    """
    req, charge = run.request, run.charge
    record = billing.usage_record(
        charge, user=req.user, api_key=req.api_key, agent=run.agent.name, input_tokens=ending.input_tokens,
        output_tokens=ending.output_tokens, status=ending.status, latency_ms=ending.latency_ms,
        cached=bool(run.plan and run.plan.hit), message_id=run.message_id, client_request_id=req.client_request_id)
    tool_calls = [{"tool": r["name"], "duration_ms": r["duration_ms"]} for r in run.ctx.tool_records]
    created = False
    try:
        record, created = await _CLOSINGS.submit(_Closing(run, ending, record, tool_calls))
    finally:
        await billing.settle_charge(charge, charge.actual_nanos(ending.input_tokens, ending.output_tokens),
                                    recorded=created)
    return record


def _close_one(write) -> tuple[object, bool]:
    """One run's closing in its own transaction; (record, created)."""
    closing = write.item
    try:
        with transaction.atomic():
            billing.record_usage(closing.record, closing.tool_calls)
            write.run(_answer_and_audit, closing)
    except IntegrityError:
        # A concurrent closing of the same run won the race: answer with its record.
        existing = billing.recorded_usage(closing.record.request_id)
        if existing is None:
            raise
        return existing, False
    return closing.record, True


def _close_many(writes) -> list[tuple[object, bool]]:
    """Many runs' closings in one transaction: bulk inserts, one audit append, one commit."""
    from audit.services import appending_together

    closings = [write.item for write in writes]
    try:
        with transaction.atomic(), appending_together():
            billing.record_usages([(closing.record, closing.tool_calls) for closing in closings])
            for write in writes:
                write.run(_answer_and_audit, write.item)
    except Exception:
        for closing in closings:  # rolled back: each is written again alone, as new
            closing.record.pk, closing.record._state.adding = None, True
        raise
    return [(closing.record, True) for closing in closings]


_CLOSINGS = GroupCommit(_close_many, _close_one)


def _answer_and_audit(closing: _Closing) -> None:
    _store_answer(closing.run, closing.ending, closing.record)
    _audit_run(closing.run, closing.ending, closing.record)  # last


def _store_answer(run, ending: Ending, record) -> None:
    from agents.models import Message

    # The conversation's updated_at moved when the turn was opened (_conversation): not again here.
    Message.objects.filter(pk=run.message_id).update(
        model=run.model.name, content=ending.answer, input_tokens=record.input_tokens, output_tokens=record.output_tokens, cost=record.cost,
        latency_ms=ending.latency_ms, ttft_ms=ending.ttft_ms, quality_score=ending.quality,
        quality_auto=ending.quality, tool_calls=run.ctx.tool_records, status=ending.status,
        error_code=ending.error_code,
    )


def _audit_run(run, ending: Ending, record) -> None:
    from audit import actions
    from audit.services import record as audit_record

    metadata = {"agent": run.agent.name, "model": run.model.name, "status": ending.status,
                "cost": decimal_text(record.cost), "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens, "run_id": run.request.run_id,
                "client_request_id": run.request.client_request_id}
    if settings.RELAY_AUDIT_PROMPTS:
        metadata["prompt"] = run.request.query[:4000]
    for switch in run.fallbacks:  # the models that could not answer, before the one that did
        audit_record(actions.MODEL_FALLBACK, actor=run.request.user, resource=f"message:{run.message_id}",
                     metadata={**switch, "run_id": run.request.run_id, "agent": run.agent.name})
    audit_record(actions.AGENT_RUN, status="success" if ending.status != "error" else "error",
                 actor=run.request.user, resource=f"message:{run.message_id}", metadata=metadata)
