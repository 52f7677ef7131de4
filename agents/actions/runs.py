"""A run's writes: its opening rows before the model is asked, and the one transaction that closes it.

Both go through group commit (relay/eventloop/group_commit.py): concurrent runs reaching the same point
share one transaction of bulk statements, and a batch that fails is written again write by
write, so a bad write fails its own run only. Closing writes billing's usage record (through
billing's plain functions), the stored answers, and the `agent.run` audit event last. On
PostgreSQL the rows travel as plain SQL (agents.actions.run_rows, billing.pg_rows): a batch's
opening is one round trip, its answers one statement, and both are written on the event loop's own
connection (relay.eventloop.pg): the opening in one round trip, the closing in two, its audit event
appended by audit.loop_append; other databases, and a closing refused there, go to a DB thread.

A run closes in two steps (docs/design.md section 7). `settle_run`: one ledger step settles the
reservation to the actual cost and holds the closing record, this module's `Closing.data`, the
plain data the transaction will write. `commit_run`: the transaction, after which the ledger
forgets the record (one trip per batch). The runner may answer between the two; a process killed
there leaves the record, and `recover_closing` writes exactly it (agents.actions.recovery).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from agents.actions import run_rows
from agents.titles import summarise
from audit import context as audit_context
from billing import services as billing
from billing.money import decimal_text
from relay.eventloop import pg
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


def _rows(opening: Opening, now) -> tuple[dict | None, list[dict]]:
    """The opening's rows as field values: its new conversation (None when it continues the
    caller's own), then the question (unless an answer is regenerated) and the running answer."""
    req = opening.req
    conversation_id = req.conversation_id or opening.conversation_id
    conversation = None if req.conversation_id else {
        "id": conversation_id, "organization_id": req.user.organization_id, "user_id": req.user.pk,
        "agent": opening.agent, "title": summarise(req.query), "created_at": now, "updated_at": now}
    common = {"conversation_id": conversation_id, "agent": opening.agent, "request_id": req.run_id,
              "client_request_id": req.client_request_id}
    question = None if req.answers else {
        **common, "id": uuid.uuid4(), "role": "user", "content": req.query, "parent_id": req.follows,
        "created_at": now}
    answer = {**common, "id": opening.message_id, "role": "assistant", "parent_id": req.answers or question["id"],
              "model": opening.model, "status": "running",
              "created_at": now + timedelta(microseconds=1)}  # the answer sorts after the question
    return conversation, [answer] if question is None else [question, answer]


def _not_theirs():
    from agents.models import Conversation

    return Conversation.DoesNotExist(f"{Conversation._meta.object_name} matching query does not exist.")


def _opening_rows(writes) -> tuple:
    """(now, new conversations, continued (id, user id), turns) of a batch of openings."""
    now, new, continued, turns = timezone.now(), [], [], []
    for write in writes:
        conversation, messages = _rows(write.item, now)
        if conversation is None:
            continued.append((write.item.req.conversation_id, write.item.req.user.pk))
        else:
            new.append(conversation)
        turns += messages
    return now, new, continued, turns


def _found(writes, found: set) -> list:
    """Each opening's result: None, or Conversation.DoesNotExist for a continued one not found (UUIDs)."""
    return [None if not write.item.req.conversation_id or uuid.UUID(str(write.item.req.conversation_id)) in found
            else _not_theirs() for write in writes]


def _open_many(writes) -> list:
    """Many runs' opening rows in one transaction; a run continuing a conversation that is not its
    caller's (or no longer exists) gets Conversation.DoesNotExist and writes nothing.

    On PostgreSQL one round trip (agents.actions.run_rows) whose commit does not wait for its WAL
    flush: the opening stands before every first token, and its rows become durable at the run's
    own closing commit at the latest (WAL is flushed in order). A database that refuses them still
    refuses the run (503); only a database crash in that moment loses them, with the run itself,
    and the closing then records its usage.
    """
    from agents.models import Conversation

    now, new, continued, turns = _opening_rows(writes)
    connection = connections[Conversation.objects.db]
    if connection.vendor == "postgresql":
        return _found(writes, run_rows.open_rows(connection, new, continued, turns, now))
    _open_orm(new, continued, turns, now)
    return [None] * len(writes)


async def _open_on_loop(writes) -> list | None:
    """_open_many on the event loop's own connection (relay.eventloop.pg), without a DB thread: the
    opening is on the way to every first token. None where that connection cannot serve."""
    if not pg.available():
        return None
    now, new, continued, turns = _opening_rows(writes)
    try:
        found = await run_rows.open_rows_on_loop(new, continued, turns, now)
    except Exception as error:  # noqa: BLE001  (handed to its caller, or each written alone)
        if len(writes) == 1:
            return [error]
        return [(await _open_on_loop([write]))[0] for write in writes]
    return _found(writes, found)


def _open_orm(new: list[dict], continued: list[tuple], turns: list[dict], now) -> None:
    """The opening through the ORM (SQLite): all or nothing, Conversation.DoesNotExist for one not the caller's."""
    from agents.models import Conversation, Message

    with transaction.atomic():
        for conversation_id, user_id in continued:  # locked: turns of one conversation do not interleave
            if not Conversation.objects.filter(pk=conversation_id, user_id=user_id).update(updated_at=now):
                raise _not_theirs()
        Conversation.objects.bulk_create([Conversation(**row) for row in new])
        Message.objects.bulk_create([Message(**row) for row in turns])


def _open_one(write) -> None:
    error = _open_many([write])[0]
    if error is not None:
        raise error


_OPENINGS = GroupCommit(_open_many, _open_one, on_loop=_open_on_loop)

# --- closing ----------------------------------------------------------------------------------

logger = logging.getLogger(__name__)


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
class Closing:
    """What a run's closing transaction writes: `data` (plain JSON: the ledger holds it until the commit)."""

    data: dict
    record: object  # billing.models.UsageRecord, unsaved: built from data["usage"]
    actor: object  # the User the run's events are recorded for
    charge: object = None  # billing.Charge; None for a closing recovered from the ledger
    actual_nanos: int = 0
    spent: dict = None  # the settled scopes' counters (for budget alerts after the commit)
    held: bool = False  # the ledger holds the record durably: the commit may come after the answer

    @property
    def request_id(self) -> str:
        return self.record.request_id

    def text(self) -> str:
        return json.dumps(self.data, cls=DjangoJSONEncoder, separators=(",", ":"))


# What PostgreSQL cannot store in text or JSON: NUL, and a UTF-16 surrogate without its partner (a
# model's JSON may escape one, \ud800; Python decodes it to a str that has no UTF-8 form).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value):
    """`value` with every character of its strings that PostgreSQL cannot store replaced by U+FFFD. A
    model (or a tool's output) may write one; refused, it failed the whole closing, a 500 with the
    run left for recovery. The client already got the answer as it was written."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {key: storable(item) for key, item in value.items()}
    return value


def closing_of(run, ending: Ending) -> Closing:
    """The closing of a run as it ended (pure: no I/O)."""
    req, charge = run.request, run.charge
    record = billing.usage_record(
        charge, user=req.user, api_key=req.api_key, agent=run.agent.name, input_tokens=ending.input_tokens,
        output_tokens=ending.output_tokens, status=ending.status, latency_ms=ending.latency_ms,
        cached=bool(run.plan and run.plan.hit), message_id=run.message_id, client_request_id=req.client_request_id)
    run_event = {"agent": run.agent.name, "model": run.model.name, "status": ending.status,
                 "cost": decimal_text(record.cost), "input_tokens": record.input_tokens,
                 "output_tokens": record.output_tokens, "run_id": req.run_id,
                 "client_request_id": req.client_request_id}
    if settings.RELAY_AUDIT_PROMPTS:
        run_event["prompt"] = req.query[:4000]
    data = {
        "usage": billing.usage_data(record),
        "tools": [{"tool": r["name"], "duration_ms": r["duration_ms"]} for r in run.ctx.tool_records],
        "answer": {"model": run.model.name, "content": storable(ending.answer), "latency_ms": ending.latency_ms,
                   "ttft_ms": ending.ttft_ms, "quality": ending.quality, "tool_calls": storable(run.ctx.tool_records),
                   "status": ending.status, "error_code": ending.error_code},
        "audit": {"actor": req.user.pk, "resource": f"message:{run.message_id}", "run": run_event,
                  "status": "success" if ending.status != "error" else "error",
                  # the models that could not answer, before the one that did
                  "fallbacks": [{**switch, "run_id": req.run_id, "agent": run.agent.name} for switch in run.fallbacks],
                  "context": _origin(req)},
    }
    return Closing(data, record, req.user, charge, charge.actual_nanos(ending.input_tokens, ending.output_tokens))


def _origin(req) -> dict:
    """The request's audit context as Celery carries it (audit.context), for an event recovered elsewhere."""
    bound = audit_context.current()
    return {"request_id": bound.request_id, "ip": bound.ip, "user_agent": bound.user_agent,
            "actor_id": req.user.pk, "actor_name": req.user.get_username(),
            "organization_id": req.user.organization_id,
            "api_key_prefix": getattr(req.api_key, "prefix", "") or bound.api_key_prefix}


async def settle_run(run, ending: Ending) -> Closing:
    """Settle the run's reservation and hold its closing record, in one ledger step (before any answer)."""
    if run.charge is not None:
        await billing.grow_to_cost(run.charge, ending.input_tokens, ending.output_tokens)
    closing = closing_of(run, ending)
    settled = await billing.settle_closing(closing.charge, closing.actual_nanos, closing.text())
    closing.spent, closing.held = settled.spent, settled.held
    return closing


async def commit_run(closing: Closing):
    """Write the closing transaction (group commit); the ledger then forgets the record. Returns the UsageRecord.

    Idempotent per run: a run recorded already (closed twice, or recovered meanwhile) returns its
    first usage record and writes nothing.
    """
    record, created = await _CLOSINGS.submit(closing)
    if created and closing.charge is not None:
        await billing.raise_alerts(closing.charge, closing.spent, closing.actual_nanos)
    return record


async def close_run(run, ending: Ending):
    """Both steps, for a caller that waits for the commit. Returns the UsageRecord."""
    return await commit_run(await settle_run(run, ending))


def _close_one(write) -> tuple[object, bool]:
    """One run's closing in its own transaction; (record, created)."""
    closing = write.item
    try:
        with transaction.atomic():
            billing.record_usage(closing.record, closing.data["tools"])
            _store_answers([closing])
            write.run(_audit_run, closing)  # last
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
            billing.record_usages([(closing.record, closing.data["tools"]) for closing in closings])
            _store_answers(closings)
            for write in writes:
                write.run(_audit_run, write.item)  # last
    except Exception:
        for closing in closings:  # rolled back: each is written again alone, as new
            closing.record.pk, closing.record._state.adding = None, True
        raise
    return [(closing.record, True) for closing in closings]


async def _forget_closings(done: list) -> None:
    """After a batch: the ledger forgets the records of the closings now in the database, in one trip."""
    from billing.ledger import LedgerUnavailable, get_ledger

    committed = [write.item.request_id for write, result in done if not isinstance(result, BaseException)]
    try:
        await get_ledger().forget_closings(committed)
    except LedgerUnavailable:  # harmless: a record of a committed run is ignored, and expires
        logger.warning("could not drop %d closing record(s) from the ledger", len(committed), exc_info=True)


async def _close_on_loop(writes) -> list | None:
    """_close_many on the event loop's own connection (relay.eventloop.pg), in two round trips
    (audit.loop_append) instead of a DB thread's five, each of which waited for the interpreter lock
    while the loop streamed the next answer. None where that connection cannot serve, or when the
    batch failed there (rolled back, nothing written): the thread writes it as before, each run alone
    if need be (one closed already answers with its first record)."""
    if not pg.available():
        return None
    from audit.loop_append import append_with
    from audit.services import collecting_events

    closings = [write.item for write in writes]
    try:
        with collecting_events() as events:
            for write in writes:
                write.run(_audit_run, write.item)
        usage_sql, usage_params, inserted = billing.record_usages_statement(
            pg.wrapper(), [(closing.record, closing.data["tools"]) for closing in closings])
        answers = run_rows.answers_statement(pg.wrapper(), [_answer_row(closing) for closing in closings])
        sets = await append_with([(usage_sql, usage_params), answers], events)
    except (DatabaseError, SynchronousOnlyOperation):
        logger.info("%d closing(s) not written on the loop; a DB thread writes them", len(writes), exc_info=True)
        return None
    if sets is None:
        return None
    inserted(sets[0])
    return [(closing.record, True) for closing in closings]


_CLOSINGS = GroupCommit(_close_many, _close_one, after=_forget_closings, on_loop=_close_on_loop)


def _answer_and_audit(closing: Closing) -> None:
    _store_answers([closing])
    _audit_run(closing)  # last


def _store_answers(closings: list[Closing]) -> None:
    """The answers of the closings: on PostgreSQL one statement for them all (agents.actions.run_rows)."""
    from agents.models import Message

    # The conversation's updated_at moved when the turn was opened (_open_many): not again here.
    answers = [_answer_row(closing) for closing in closings]
    connection = connections[Message.objects.db]
    if connection.vendor == "postgresql":
        run_rows.store_answers(connection, answers)
        return
    for answer in answers:
        Message.objects.filter(pk=answer.pop("id")).update(**answer)


def _answer_row(closing: Closing) -> dict:
    answer, record = closing.data["answer"], closing.record
    return {"id": record.message_id, "model": answer["model"], "content": answer["content"],
            "input_tokens": record.input_tokens, "output_tokens": record.output_tokens, "cost": record.cost,
            "latency_ms": answer["latency_ms"], "ttft_ms": answer["ttft_ms"], "quality_score": answer["quality"],
            "quality_auto": answer["quality"], "tool_calls": answer["tool_calls"], "status": answer["status"],
            "error_code": answer["error_code"]}


def _audit_run(closing: Closing) -> None:
    from audit import actions
    from audit.services import record as audit_record

    audit = closing.data["audit"]
    for switch in audit["fallbacks"]:
        audit_record(actions.MODEL_FALLBACK, actor=closing.actor, resource=audit["resource"], metadata=switch)
    audit_record(actions.AGENT_RUN, status=audit["status"], actor=closing.actor, resource=audit["resource"],
                 metadata=audit["run"])


# --- recovery -----------------------------------------------------------------------------------


def recover_closing(text: str, *, by: str) -> bool:
    """Write a closing the ledger held for a run whose process died before committing it, exactly as
    that process would have, marked `recovered_by`; the ledger, settled already, is not charged again.

    Sync (the periodic job, `manage.py reconcile`). False if the run was recorded meanwhile (its
    process came back, or another recoverer won): the usage record's unique run id decides.
    """
    from accounts.models import User
    from audit.context import AuditContext, bind

    data = json.loads(text)
    data["audit"]["run"]["recovered_by"] = by
    record = billing.usage_from_data(data["usage"])
    closing = Closing(data, record, User.objects.filter(pk=data["audit"]["actor"]).first())
    with bind(AuditContext.from_headers(data["audit"]["context"])):
        try:
            with transaction.atomic():
                billing.record_usage(record, data["tools"])  # first, as the original: no lock-order deadlock
                _answer_and_audit(closing)
        except IntegrityError:
            if billing.recorded_usage(record.request_id) is None:
                raise
            return False
    return True
