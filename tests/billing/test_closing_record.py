"""A run's closing record: held by the ledger in the settle's own step, dropped once the closing commits,
and written exactly once by the recovery when the commit never comes."""

import asyncio
import json
import uuid

import pytest
from django.db import OperationalError

from agents.actions import runs
from agents.jobs import mark_interrupted_messages
from agents.models import Message
from agents.providers.base import ProviderError
from audit.maintenance import verify_chain
from audit.models import AuditEvent
from billing import budgets, services
from billing.models import UsageRecord
from billing.money import usd_to_nanos
from tests.billing.conftest import make_budget, seed_prices
from tests.billing.test_charges import IN, OUT
from tests.billing.test_hot_path import _open, _run
from tests.reconciled import assert_reconciled
from tests.support.sockets import StuckSocket

pytestmark = pytest.mark.django_db(transaction=True)
ENDING = runs.Ending(status="complete", answer="The answer is 2.", input_tokens=IN, output_tokens=OUT, latency_ms=7,
                     quality=0.9, ttft_ms=3)


@pytest.fixture(autouse=True)
def _prices(transactional_db):
    seed_prices()


@pytest.fixture
def calls(ledger, monkeypatch):
    """The ledger's operations in order, and for Redis its scripts (each one round trip)."""
    seen = {"ops": [], "trips": 0}
    for name in ("settle", "settle_closing", "held_closings", "forget_closings", "counters"):
        original = getattr(ledger, name)

        async def recording(*args, _original=original, _name=name, **kwargs):
            seen["ops"].append(_name)
            return await _original(*args, **kwargs)

        monkeypatch.setattr(ledger, name, recording)
    if hasattr(ledger, "backend"):
        run = ledger.backend.run

        async def trip(*args):
            seen["trips"] += 1
            return await run(*args)

        monkeypatch.setattr(ledger.backend, "run", trip)
    return seen


def _opened_run(user):
    """A reserved run with its question and running answer stored, as the runner leaves it before closing."""
    async def opened():
        run = _run(user, await _open(user))
        run.request.run_id = run.charge.request_id  # one id for the run, as the runner names them
        run.conversation_id = str(uuid.uuid4())
        await runs.open_run(runs.Opening(run.request, run.conversation_id, run.message_id, "math", "local-mini"))
        return run

    return asyncio.run(opened())


def _spent(org):
    from django.utils import timezone

    from billing.ledger import get_ledger

    covering = budgets.covering(org.budgets.get(), timezone.now())
    return asyncio.run(get_ledger().spent(covering.scope_key)), budgets.spent_in_period(covering.budget,
                                                                                         timezone.now())


def _held(ledger, request_id=None):
    return asyncio.run(ledger.held_closings([request_id] if request_id else None))


def test_the_settle_holds_the_closing_in_the_same_trip_and_the_commit_drops_it(org, users, ledger, calls):
    make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    calls["ops"].clear()
    calls["trips"] = 0

    closing = asyncio.run(runs.settle_run(run, ENDING))
    assert calls["ops"] == ["settle_closing"]  # one ledger operation: the settle and the record together
    if hasattr(ledger, "backend"):
        assert calls["trips"] == 1 and closing.held  # one script, on the shared Redis: durable
    else:
        assert not closing.held  # the in-process ledger dies with the process: the run commits before answering
    cost = usd_to_nanos(closing.record.cost)
    assert cost > 0 and _spent(org) == (cost, 0)  # settled to the actual cost before anything is written
    held = _held(ledger, run.request.run_id)[run.request.run_id]
    assert held.charged_nanos == cost and len(held.scopes) == 1
    assert json.loads(held.closing)["answer"]["content"] == "The answer is 2."
    assert not UsageRecord.objects.exists()

    record = asyncio.run(runs.commit_run(closing))
    assert UsageRecord.objects.get().pk == record.pk
    assert _held(ledger) == {}  # committed: the ledger forgot it
    assert _spent(org) == (cost, cost)
    assert calls["ops"].count("forget_closings") == 1
    assert_reconciled()


def test_a_batch_of_commits_drops_its_records_in_one_trip(org, users, ledger, calls):
    make_budget(org, limit_usd="10")
    prepared = [_opened_run(users["user"]) for _ in range(5)]

    async def scenario():
        closings = [await runs.settle_run(run, ENDING) for run in prepared]
        calls["ops"].clear()
        await asyncio.gather(*(runs.commit_run(closing) for closing in closings))

    asyncio.run(scenario())
    assert UsageRecord.objects.count() == 5
    assert calls["ops"] == ["forget_closings"]
    assert _held(ledger) == {}


def test_reconcile_counts_a_held_closing_until_its_record_is_written(org, users, ledger):
    make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    asyncio.run(runs.settle_run(run, ENDING))  # answered; the commit has not happened yet
    spent, in_records = _spent(org)
    assert spent > in_records == 0
    assert_reconciled(grace=0)  # the counter is ahead of the records by exactly the held closing


def test_a_closing_whose_commit_failed_is_recovered_exactly_once(org, users, ledger, monkeypatch):
    make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    closing = asyncio.run(runs.settle_run(run, ENDING))

    def database_down(*args):
        raise OperationalError("the database went away")

    write_batch, write_one = runs._CLOSINGS.write_batch, runs._CLOSINGS.write_one
    monkeypatch.setattr(runs._CLOSINGS, "write_batch", database_down)
    monkeypatch.setattr(runs._CLOSINGS, "write_one", database_down)
    with pytest.raises(OperationalError):
        asyncio.run(runs.commit_run(closing))
    assert run.request.run_id in _held(ledger)  # nothing lost: the record stays
    monkeypatch.setattr(runs._CLOSINGS, "write_batch", write_batch)
    monkeypatch.setattr(runs._CLOSINGS, "write_one", write_one)

    assert mark_interrupted_messages(older_than_seconds=0) == 1
    assert mark_interrupted_messages(older_than_seconds=0) == 0  # idempotent
    again = asyncio.run(runs.commit_run(closing))  # the original process comes back: it writes nothing
    usage = UsageRecord.objects.get()
    assert again.pk == usage.pk
    assert (usage.input_tokens, usage.output_tokens, usage.status) == (IN, OUT, "complete")
    assert usage.cost == closing.record.cost > 0
    answer = Message.objects.get(pk=run.message_id)
    assert (answer.status, answer.content, answer.cost) == ("complete", "The answer is 2.", usage.cost)
    event = AuditEvent.objects.get(action="agent.run")
    assert event.metadata["run_id"] == run.request.run_id and event.metadata["recovered_by"] == "periodic"
    assert event.metadata["cost"] == json.loads(closing.text())["audit"]["run"]["cost"]
    assert event.actor_id == users["user"].pk
    assert _spent(org) == (usd_to_nanos(usage.cost),) * 2  # billed once: the recovery charged nothing again
    assert _held(ledger) == {}
    assert verify_chain().ok
    assert_reconciled()


def test_without_a_held_closing_the_answer_is_interrupted_at_zero_cost(org, users, ledger):
    run = _opened_run(users["user"])
    assert mark_interrupted_messages(older_than_seconds=0) == 1
    assert Message.objects.get(pk=run.message_id).status == "interrupted"
    assert UsageRecord.objects.get().cost == 0
    assert services.recorded_usage(run.request.run_id).status == "interrupted"


def test_on_the_servers_loop_the_answer_ends_before_its_closing_commits(org, users, ledger, monkeypatch):
    from agents import runner
    from relay.eventloop import later
    from relay.eventloop.db import run_db

    make_budget(org, limit_usd="10")
    durable = hasattr(ledger, "backend")  # the in-process ledger's record dies with the process

    async def scenario():
        later.serve_here()  # as relay.serve does
        released, commit = asyncio.Event(), runs.commit_run

        async def held_back(closing):
            await released.wait()
            return await commit(closing)

        if durable:
            monkeypatch.setattr(runs, "commit_run", held_back)
        run = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))

        async def answer():
            async for event in runner.stream(run):
                if event["type"] == "done":
                    return await run_db(UsageRecord.objects.count)

        try:  # a runner that waited for the commit would never get to `done` here
            at_done = await asyncio.wait_for(answer(), 30)
        finally:
            released.set()
        assert await later.drain(10) == 0
        return at_done

    at_done = asyncio.run(scenario())
    assert at_done == (0 if durable else 1)  # the client's last event did not wait for the commit
    usage = UsageRecord.objects.get()
    assert usage.cost > 0 and Message.objects.get(request_id=usage.request_id, role="assistant").status == "complete"
    assert AuditEvent.objects.filter(action="agent.run", metadata__run_id=usage.request_id).count() == 1
    assert _held(ledger) == {}
    assert_reconciled()


def test_a_held_closing_commits_once_no_other_request_is_starting(org, users, ledger, settings):
    """The closing's commit waits behind a request of its loop that has sent nothing yet (relay.eventloop.later)."""
    from agents import runner
    from relay.eventloop import later
    from relay.eventloop.db import run_db

    settings.RELAY_CLOSING_HOLD_MS = 60_000
    durable = hasattr(ledger, "backend")  # only a closing the ledger holds may wait

    async def scenario():
        later.serve_here()
        starting = later.answering()  # another request on this loop, before its first byte
        run = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))
        async for _ in runner.stream(run):
            pass
        for _ in range(20):
            await asyncio.sleep(0)
        while_starting = await run_db(UsageRecord.objects.count)
        starting()
        assert await later.drain(10) == 0
        return while_starting

    assert asyncio.run(scenario()) == (0 if durable else 1)
    assert UsageRecord.objects.count() == 1
    assert _held(ledger) == {}
    assert_reconciled()


def test_the_next_turn_waits_for_the_last_closing_on_this_instance(org, users, ledger, monkeypatch):
    """A follow-up sent the moment an answer ends reads that answer as history, not the empty row."""
    from agents import runner
    from relay.eventloop import later

    durable = hasattr(ledger, "backend")

    async def scenario():
        later.serve_here()
        released, commit = asyncio.Event(), runs.commit_run

        async def held_back(closing):
            await released.wait()
            return await commit(closing)

        monkeypatch.setattr(runs, "commit_run", held_back if durable else commit)
        first = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))
        answer = "".join([e["content"] async for e in runner.stream(first) if e["type"] == "token"])
        follow_up = asyncio.ensure_future(runner.prepare(runner.new_request(
            users["user"], None, {"agent_type": "math", "query": "and 2+2?", "conversation_id": first.conversation_id})))
        if durable:  # its history is read only after the first closing commits
            assert not (await asyncio.wait([follow_up], timeout=0.3))[0]
        released.set()
        second = await follow_up
        async for _ in runner.stream(second):
            pass
        assert await later.drain(10) == 0
        return answer, second.ctx.history

    answer, history = asyncio.run(scenario())
    assert answer and {"role": "assistant", "content": answer} in history


def test_a_stream_closed_at_its_start_event_closes_its_run_unbilled(org, users, ledger):
    """A client gone after the first event (an SSE disconnect, a WebSocket cancel) leaves no run open:
    the reservation is given back at once and the answer is stored as cancelled at zero cost, since
    no model was asked, instead of waiting for the reservation's TTL and the periodic job."""
    from django.utils import timezone

    from agents import runner

    scope = budgets.covering(make_budget(org, limit_usd="10"), timezone.now()).scope_key

    async def scenario():
        run = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))
        held = await ledger.reserved(scope)
        events = runner.stream(run)
        first = await anext(events)
        await events.aclose()
        return run, first, held, await ledger.reserved(scope)

    run, first, held, left = asyncio.run(scenario())
    assert first["type"] == "start" and held > 0 and left == 0
    assert Message.objects.get(pk=run.message_id).status == Message.Status.CANCELLED
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert (usage.input_tokens, usage.output_tokens, usage.cost) == (0, 0, 0)
    assert AuditEvent.objects.filter(action="agent.run", metadata__run_id=run.request.run_id).count() == 1
    assert _spent(org) == (0, 0)
    assert_reconciled()


def _cancelled_while_sending(users, stuck_on: str):
    """A WebSocket stream of a new run whose client cancels while `stuck_on` is being sent: (run, events sent)."""
    from agents import runner
    from agents.consumers import ChatConsumer

    async def scenario():
        run = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))
        socket = StuckSocket(stuck_on)
        task = asyncio.ensure_future(ChatConsumer._stream(socket, run))
        await socket.stuck.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return run, socket.sent

    return asyncio.run(scenario())


def test_a_websocket_cancel_during_the_start_event_stores_the_run_before_its_done(org, users, ledger):
    """The cancel lands while the socket sends the first event: the run is closed in the consumer's
    own task (not later by the garbage collector), so the client's `done` tells what it cost."""
    make_budget(org, limit_usd="10")

    run, sent = _cancelled_while_sending(users, "start")
    assert [event["type"] for event in sent] == ["start", "done"]
    assert sent[-1]["status"] == "cancelled" and sent[-1]["total_tokens"] == 0 and float(sent[-1]["cost"]) == 0
    assert Message.objects.get(pk=run.message_id).status == Message.Status.CANCELLED
    assert _spent(org) == (0, 0)
    assert_reconciled()


def _answers_then_fails(failure):
    """A model that streams two tokens, then fails with `failure` (in place of agents.fallbacks.answer)."""
    from agents.providers.base import TextDelta

    async def answer(run, progress):
        yield TextDelta("Two")
        yield TextDelta(" is")
        raise failure

    return answer


FAILURES = [pytest.param(lambda: ProviderError("upstream_error", "The upstream failed."), id="upstream"),
            pytest.param(lambda: RuntimeError("the agent broke"), id="agent")]


@pytest.mark.parametrize("failure", FAILURES)
def test_a_stream_closed_at_its_error_event_bills_the_tokens_it_streamed(org, users, ledger, monkeypatch, failure):
    """The client leaves while the error event is sent (an SSE disconnect; a budget stop it provoked on
    purpose): the run is still closed as it ended, with the tokens it streamed billed, one usage record
    and one event, instead of left running for the periodic job to close at zero cost."""
    from django.utils import timezone

    from agents import fallbacks, runner

    monkeypatch.setattr(fallbacks, "answer", _answers_then_fails(failure()))
    scope = budgets.covering(make_budget(org, limit_usd="10"), timezone.now()).scope_key

    async def scenario():
        run = await runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "1+1"}))
        events, seen = runner.stream(run), []
        while not seen or seen[-1]["type"] != "error":
            seen.append(await anext(events))
        await events.aclose()
        return run, seen, await ledger.reserved(scope)

    run, seen, left = asyncio.run(scenario())
    assert [event["type"] for event in seen] == ["start", "token", "token", "error"] and left == 0
    assert Message.objects.get(pk=run.message_id).status == Message.Status.ERROR
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert usage.output_tokens == 2 and usage.cost > 0
    assert AuditEvent.objects.filter(action="agent.run", metadata__run_id=run.request.run_id).count() == 1
    assert _spent(org) == (usd_to_nanos(usage.cost),) * 2
    assert_reconciled()


def test_a_websocket_cancel_during_the_error_event_stores_the_run_before_its_done(org, users, ledger, monkeypatch):
    """A client that stops reading when the error comes, then cancels: the run is closed as it ended
    and billed for its tokens, and the client's `done` says so."""
    from agents import fallbacks

    monkeypatch.setattr(fallbacks, "answer", _answers_then_fails(ProviderError("upstream_error", "The upstream failed.")))
    make_budget(org, limit_usd="10")

    run, sent = _cancelled_while_sending(users, "error")
    assert [event["type"] for event in sent] == ["start", "token", "token", "error", "done"]
    assert sent[-1]["status"] == "error" and sent[-1]["total_tokens"] > 2 and float(sent[-1]["cost"]) > 0
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert usage.output_tokens == 2 and _spent(org) == (usd_to_nanos(usage.cost),) * 2
    assert Message.objects.get(pk=run.message_id).status == Message.Status.ERROR
    assert_reconciled()


def test_a_budget_rebuilt_between_a_settle_and_its_commit_keeps_that_run(org, users, ledger):
    """Saving a budget rebuilds its counter from the records (billing.budget_changes). A run answered
    a moment ago is settled in the ledger but not yet in the records: the rebuilt counter holds it,
    or that much of a hard limit could be spent again."""
    budget = make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    closing = asyncio.run(runs.settle_run(run, ENDING))
    cost = usd_to_nanos(closing.record.cost)
    budgets.rebuild_budget(budget)  # an admin saves the budget now
    assert _spent(org) == (cost, 0)
    asyncio.run(runs.commit_run(closing))
    assert _spent(org) == (cost, cost)
    budgets.rebuild_budget(budget)  # and again once it is written: counted once
    assert _spent(org) == (cost, cost)
    assert_reconciled()


def test_a_settle_made_while_the_records_are_summed_survives_the_rebuild(org, users, ledger, monkeypatch):
    budget = make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    summed, sum_records = {}, budgets.spent_in_period

    def sum_while_a_run_settles(budget, now):
        total = sum_records(budget, now)
        summed["closing"] = asyncio.run(runs.settle_run(run, ENDING))  # lands between the sum and the set
        return total

    monkeypatch.setattr(budgets, "spent_in_period", sum_while_a_run_settles)
    budgets.rebuild_budget(budget)
    monkeypatch.setattr(budgets, "spent_in_period", sum_records)
    cost = usd_to_nanos(summed["closing"].record.cost)
    assert _spent(org) == (cost, 0)
    asyncio.run(runs.commit_run(summed["closing"]))
    assert _spent(org) == (cost, cost)
    assert_reconciled()


def test_a_team_deleted_while_a_member_runs_leaves_the_run_billed_and_audited(org, users, ledger):
    # Control: billing.pg_rows._kept_reference (and services._forget_deleted_references off PostgreSQL).
    # Without it the closing named the deleted team, its foreign key failed on every try, and the
    # answered run was never billed nor audited.
    from accounts.actions.teams import delete_team

    make_budget(org, limit_usd="10")
    user = users["user"]
    assert user.team is not None
    run = _opened_run(user)  # reserved, the question stored, the model being asked
    delete_team(user.team, actor=users["admin"])
    closing = asyncio.run(runs.settle_run(run, ENDING))
    asyncio.run(runs.commit_run(closing))
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert (usage.team_id, usage.user_id, usage.status) == (None, user.pk, "complete") and usage.cost > 0
    assert AuditEvent.objects.filter(action="agent.run", metadata__run_id=run.request.run_id).count() == 1
    assert Message.objects.get(pk=run.message_id).status == "complete"
    assert _held(ledger) == {}
    assert_reconciled()


def test_a_held_closing_naming_a_deleted_team_is_recovered(org, users, ledger, monkeypatch):
    # The same deletion when the instance died between the answer and the commit: the periodic job writes it.
    from accounts.actions.teams import delete_team

    make_budget(org, limit_usd="10")
    run = _opened_run(users["user"])
    asyncio.run(runs.settle_run(run, ENDING))  # held in the ledger; the process "dies" before its commit
    delete_team(users["user"].team, actor=users["admin"])
    assert mark_interrupted_messages(older_than_seconds=0) == 1
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert usage.team_id is None and usage.status == "complete" and usage.cost > 0
    assert _held(ledger) == {}
    assert_reconciled()


def test_an_answer_whose_recovery_fails_does_not_hold_back_the_ones_after_it(org, users, ledger, monkeypatch):
    # Control: agents.jobs._recovered. The stale answers are taken oldest first: one that raised ended
    # the pass, so every answer after it stayed running, pass after pass.
    import agents.jobs

    first, second = _opened_run(users["user"]), _opened_run(users["viewer"])
    recover = agents.jobs.recover_message

    def failing_for_the_first(message, **kwargs):
        if str(message.pk) == str(first.message_id):
            raise RuntimeError("cannot be written")
        return recover(message, **kwargs)

    monkeypatch.setattr(agents.jobs, "recover_message", failing_for_the_first)
    assert mark_interrupted_messages(older_than_seconds=0) == 1
    assert Message.objects.get(pk=second.message_id).status == "interrupted"
    assert Message.objects.get(pk=first.message_id).status == "running"  # tried again on the next pass
    monkeypatch.setattr(agents.jobs, "recover_message", recover)
    assert mark_interrupted_messages(older_than_seconds=0) == 1
    assert Message.objects.get(pk=first.message_id).status == "interrupted"
