"""A run's opening and closing rows on PostgreSQL (agents.actions.run_rows, billing.pg_rows): one round
trip to open however many runs, one statement for a batch's answers and one for its usage records,
each run exactly its own rows, the caller's own conversation only, and a failed batch written again
run by run. Each statement costs Relay's CPU and a round trip on the hot path of every model call."""

import asyncio
import uuid

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection
from psycopg.pq import TransactionStatus

from agents.actions import runs
from agents.models import Conversation, Message
from agents.runner import new_request
from agents.titles import summarise
from billing.models import ToolUsage, UsageRecord
from relay.eventloop.group_commit import Write
from tests.billing.conftest import seed_prices
from tests.billing.test_charges import IN
from tests.billing.test_closing_record import _opened_run
from tests.conftest import require_postgres

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres(transactional_db):
    require_postgres()
    seed_prices()


@pytest.fixture
def batches(monkeypatch):
    sizes, batch = [], runs._OPENINGS.write_batch
    monkeypatch.setattr(runs._OPENINGS, "write_batch", lambda writes: sizes.append(len(writes)) or batch(writes))
    return sizes


def _opening(user, conversation=None, query="integrate x^2"):
    data = {"agent_type": "math", "query": query}
    if conversation is not None:
        data["conversation_id"] = str(conversation)
    req = new_request(user, None, data)
    if conversation is not None:
        req.follows = str(Message.objects.filter(conversation_id=conversation).latest("created_at").pk)
    return runs.Opening(req, str(conversation or uuid.uuid4()), str(uuid.uuid4()), "math", "local-mini")


def _open_together(*openings) -> list:
    async def together():
        return await asyncio.gather(*(runs.open_run(opening) for opening in openings), return_exceptions=True)

    return asyncio.run(together())


def _idle() -> bool:
    return connection.connection.info.transaction_status == TransactionStatus.IDLE


def test_runs_opened_together_are_one_round_trip_each_with_its_own_rows(users, batches, sql):
    user = users["user"]
    first, second = _opening(user), _opening(user, query="differentiate x^2")
    asyncio.run(runs.open_run(first))
    asyncio.run(runs.open_run(second))
    moved_before = Conversation.objects.get(pk=first.conversation_id).updated_at
    continued, again, *new = [_opening(user, first.conversation_id, "and x^3?"),
                              _opening(user, second.conversation_id, "and x^3?"),
                              _opening(user, query="solve x+1=2"), _opening(user, query="what is 15% of 240")]
    sql.clear()
    assert _open_together(continued, again, *new) == [None] * 4
    assert batches == [4]
    sent = [q for q in sql if "agents_" in q]
    assert len(sent) == 1, sent  # BEGIN, the setting, the conversations, the lock, the messages, COMMIT
    assert sent[0].startswith("BEGIN; ") and sent[0].endswith("; COMMIT")
    assert "SELECT agents_open_runs(" in sent[0]  # its plan cached by the connection (migration agents/0008)
    for opening in new:
        conversation = Conversation.objects.get(pk=opening.conversation_id)
        assert (conversation.user, conversation.title) == (user, summarise(opening.req.query))
        question, answer = conversation.messages.order_by("created_at")
        assert (question.role, question.content, question.request_id) == ("user", opening.req.query,
                                                                          opening.req.run_id)
        assert (str(answer.pk), answer.parent_id, answer.status, answer.model) == (
            opening.message_id, question.pk, "running", "local-mini")
    turn = Conversation.objects.get(pk=first.conversation_id)
    assert turn.messages.count() == 4 and turn.updated_at > moved_before  # moved up its owner's list
    question = turn.messages.get(content="and x^3?")
    assert str(question.parent_id) == continued.req.follows
    assert turn.messages.get(parent=question).status == "running"
    assert Message.objects.filter(conversation_id=second.conversation_id).count() == 4


AWKWARD = ["it's \"quoted\" \\ {a,b} NULL", "{}", "NULL", "", "多语言 🤖 émoji\nnew line\ttab", "a,b;c) --"]


@pytest.mark.parametrize("together", [1, 3])  # VALUES of scalars (one opening: two rows), arrays (three: six)
def test_awkward_text_is_stored_exactly_in_either_shape(users, batches, together):
    user = users["user"]
    for query in AWKWARD:
        openings = [_opening(user, query=query or " ") for _ in range(together)]
        for opening in openings:
            opening.req.client_request_id = query  # free text of the client's, stored on both rows
        batches.clear()
        assert _open_together(*openings) == [None] * together
        assert batches == ([together] if together > 1 else [])  # one alone is written by write_one
        for opening in openings:
            conversation = Conversation.objects.get(pk=opening.conversation_id)
            question, answer = conversation.messages.order_by("created_at")
            assert (question.content, question.client_request_id, answer.client_request_id) == (
                opening.req.query, query, query)
            assert conversation.title == summarise(opening.req.query)


@pytest.mark.parametrize("other", ["same_org", "other_org"])
def test_a_turn_in_another_users_conversation_is_refused_and_writes_nothing(users, other_users, batches, other):
    owner = users["user"]
    stranger = users["admin"] if other == "same_org" else other_users["admin"]
    mine = _opening(owner)
    asyncio.run(runs.open_run(mine))
    before = Conversation.objects.get(pk=mine.conversation_id).updated_at
    with pytest.raises(Conversation.DoesNotExist):  # alone
        asyncio.run(runs.open_run(_opening(stranger, mine.conversation_id)))
    theirs = _opening(stranger)
    refused, opened = _open_together(_opening(stranger, mine.conversation_id), theirs)  # in a batch
    assert batches == [2]
    assert isinstance(refused, Conversation.DoesNotExist) and opened is None
    assert Message.objects.filter(conversation_id=theirs.conversation_id).count() == 2
    stored = Conversation.objects.get(pk=mine.conversation_id)
    assert (stored.messages.count(), stored.updated_at) == (2, before)
    assert _idle()


def test_a_continued_conversation_is_locked_while_its_turn_is_written(users):
    user = users["user"]
    first = _opening(user)
    runs._open_one(Write(first))
    other = psycopg.connect(**connection.get_connection_params())  # another transaction holds the conversation
    try:
        other.execute("SELECT 1 FROM agents_conversation WHERE id = %s FOR UPDATE", [first.conversation_id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        with pytest.raises(OperationalError, match="lock timeout"):
            runs._open_one(Write(_opening(user, first.conversation_id, "and then?")))
        assert _idle()  # rolled back: the connection is clean for its next user
        other.rollback()
        runs._open_one(Write(_opening(user, first.conversation_id, "and then?")))
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert Message.objects.filter(conversation_id=first.conversation_id).count() == 4


def test_a_failed_opening_batch_is_written_again_run_by_run(users, batches):
    user = users["user"]
    good, twin, other = _opening(user), _opening(user), _opening(user)
    twin.message_id = good.message_id  # the batch breaks on its answer's primary key
    results = _open_together(good, twin, other)
    assert batches == [3]
    assert results[0] is None and isinstance(results[1], IntegrityError) and results[2] is None
    assert Message.objects.filter(conversation_id=good.conversation_id).count() == 2
    assert Message.objects.filter(conversation_id=other.conversation_id).count() == 2
    assert not Conversation.objects.filter(pk=twin.conversation_id).exists()
    assert _idle()


@pytest.mark.parametrize("count", [1, 2, 4])  # VALUES of one row, of two (billing.pg_rows.SCALAR_ROWS), arrays
def test_a_batchs_answers_and_usage_are_one_statement_each_and_each_run_its_own(users, ledger, sql, count):
    user = users["user"]
    prepared = [_opened_run(user) for _ in range(count)]
    for n, run in enumerate(prepared):
        run.ctx.tool_records = [{"name": f"tool{n}", "duration_ms": n + 1}] * (n % 3)
    endings = [runs.Ending(status=("complete", "cancelled", "error", "budget_stop")[n], answer=f"answer {n}",
                           input_tokens=IN, output_tokens=n + 1, latency_ms=10 + n, quality=n / 10,
                           ttft_ms=None if n == 2 else n, error_code="upstream_error" if n == 2 else "")
               for n in range(count)]

    async def together():
        closings = [await runs.settle_run(run, ending) for run, ending in zip(prepared, endings, strict=True)]
        return await asyncio.gather(*(runs.commit_run(closing) for closing in closings))

    sql.clear()
    records = asyncio.run(together())
    assert len([q for q in sql if q.startswith("UPDATE agents_message")]) == 1
    assert len([q for q in sql if "billing_usagerecord" in q]) == 1  # the records and their tool usages
    for n, (run, ending, record) in enumerate(zip(prepared, endings, records, strict=True)):
        message = Message.objects.get(pk=run.message_id)
        assert (message.content, message.status, message.output_tokens, message.input_tokens) == (
            ending.answer, ending.status, n + 1, IN)
        assert (message.latency_ms, message.ttft_ms, message.quality_score, message.error_code) == (
            10 + n, ending.ttft_ms, n / 10, ending.error_code)
        assert message.cost == record.cost and message.tool_calls == run.ctx.tool_records
        stored = UsageRecord.objects.get(request_id=run.request.run_id)
        assert (stored.pk, str(stored.message_id), stored.output_tokens) == (record.pk, run.message_id, n + 1)
        assert list(ToolUsage.objects.filter(usage=stored).values_list("tool", "duration_ms")) == [
            (f"tool{n}", n + 1)] * (n % 3)
