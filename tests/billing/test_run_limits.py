"""A live run always closes, and settles, inside its reservation's TTL.

Otherwise the periodic job takes the answer still `running` for a dead instance's: it is closed as
`interrupted` at zero cost, and the run's own closing, when it comes, finds that record and is
dropped while the ledger charged it (free tokens for a client that keeps a stream open long
enough). Controls: agents.deadlines, the deadline in runner._produce, the stalled-client
timeouts of the SSE pump (agents.api.sse) and of the WebSocket consumer (agents.consumers).
"""

import asyncio
import time

import pytest
from django.utils import timezone

from agents import deadlines, fallbacks, runner
from agents.api import sse
from agents.consumers import ChatConsumer
from agents.jobs import mark_interrupted_messages
from agents.models import Message
from agents.providers.base import TextDelta
from billing import budgets
from billing.models import UsageRecord
from tests.billing.conftest import make_budget, seed_prices
from tests.reconciled import assert_reconciled
from tests.support.sockets import StuckSocket

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(transactional_db):
    seed_prices()


@pytest.fixture
def endless_model(monkeypatch):
    """A model that streams tokens for as long as it is read."""
    async def answer(run, progress):
        while True:
            yield TextDelta("word ")

    monkeypatch.setattr(fallbacks, "answer", answer)


@pytest.fixture
def finished(monkeypatch):
    """Set once the runner has closed a run (its _finish returned)."""
    done, original = asyncio.Event(), runner._finish

    async def finish(run, progress):
        try:
            return await original(run, progress)
        finally:
            done.set()

    monkeypatch.setattr(runner, "_finish", finish)
    return done


def _prepared(users):
    return runner.prepare(runner.new_request(users["user"], None, {"agent_type": "math", "query": "Say a lot.",
                                                                   "max_tokens": 1000}))


def _closed_and_billed(run, status: str, error_code: str = "") -> UsageRecord:
    message = Message.objects.get(pk=run.message_id)
    assert (message.status, message.error_code) == (status, error_code)
    usage = UsageRecord.objects.get(request_id=run.request.run_id)
    assert usage.output_tokens >= 1 and usage.cost > 0
    return usage


def test_the_limits_fit_inside_the_reservation_ttl_and_the_interrupted_age(settings):
    settings.RELAY_BUDGET_RESERVATION_TTL, settings.RELAY_INTERRUPTED_AFTER_SECONDS = 900, 900
    assert deadlines.limits() == (720, 60)
    settings.RELAY_INTERRUPTED_AFTER_SECONDS = 300  # the smaller bound rules
    longest, stall = deadlines.limits()
    # the run, then the upstream's longest silence (its read timeout, below the stall) and a stalled send
    assert longest + 2 * stall <= 300 and longest > 0


def test_a_run_that_reaches_its_deadline_stops_billed_for_what_it_said(org, users, ledger, monkeypatch, endless_model):
    scope = budgets.covering(make_budget(org, limit_usd="10"), timezone.now()).scope_key
    clock = {"ahead": 0.0}
    monkeypatch.setattr(deadlines, "now", lambda: time.monotonic() + clock["ahead"])

    async def scenario():
        run = await _prepared(users)
        seen = []
        async for event in runner.stream(run):
            seen.append(event)
            if len(seen) == 3:  # start and two tokens, then the run's time is up
                clock["ahead"] = deadlines.limits()[0] + 1
        return run, seen, await ledger.reserved(scope)

    run, seen, left = asyncio.run(scenario())
    assert [event["type"] for event in seen] == ["start", "token", "token", "error", "usage", "done"]
    assert seen[3]["code"] == "run_timeout" and seen[-1]["status"] == "error" and left == 0
    usage = _closed_and_billed(run, "error", "run_timeout")
    assert usage.output_tokens == 2
    assert mark_interrupted_messages(older_than_seconds=0) == 0  # nothing left for the periodic job
    assert_reconciled()


def test_an_sse_client_that_stops_reading_loses_its_stream_and_its_run_closes(org, users, ledger, monkeypatch,
                                                                           endless_model, finished):
    scope = budgets.covering(make_budget(org, limit_usd="10"), timezone.now()).scope_key
    monkeypatch.setattr(deadlines, "limits", lambda: (10_000.0, 0.05))

    async def scenario():
        run = await _prepared(users)
        frames = sse.sse_events(run, sse.RelayFraming())
        taken = [await anext(frames), await anext(frames)]  # start and a token, then the client takes nothing
        await asyncio.wait_for(finished.wait(), 30)
        rest = [frame async for frame in frames]  # what was fetched before, then the end
        return run, taken, rest, await ledger.reserved(scope)

    run, taken, rest, left = asyncio.run(scenario())
    assert b'"start"' in taken[0] and b'"token"' in taken[1] and len(rest) <= 1 and left == 0
    _closed_and_billed(run, "cancelled")
    assert_reconciled()


def test_a_websocket_client_that_stops_reading_has_its_run_closed(org, users, ledger, monkeypatch, endless_model):
    scope = budgets.covering(make_budget(org, limit_usd="10"), timezone.now()).scope_key
    monkeypatch.setattr(deadlines, "limits", lambda: (10_000.0, 0.05))

    async def scenario():
        run = await _prepared(users)
        socket = StuckSocket("token")  # the client stopped reading at the first token
        await asyncio.wait_for(ChatConsumer._stream(socket, run), 30)
        return run, socket.sent, await ledger.reserved(scope)

    run, sent, left = asyncio.run(scenario())
    assert [event["type"] for event in sent] == ["start", "token"] and left == 0
    _closed_and_billed(run, "cancelled")
    assert_reconciled()
