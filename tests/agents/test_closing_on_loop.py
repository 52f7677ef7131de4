"""A run's closing written on the event loop's own connection (agents.actions.runs._close_on_loop).

- It commits there in two round trips, with no trip to a DB thread: the usage record, the stored
  answer and the run's audit event, linked on the chain, which verifies; `reconcile` is clean.
- Another writer holding the audit append lock does not block the closing's transaction: its event
  is queued in it, and the drain after the commit chains it once that writer is done.
- A closing the database refuses midway on the loop leaves nothing written there (rolled back,
  the connection idle); a DB thread then writes it, once: one usage record, one audit event.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
import psycopg
import pytest

from agents.actions import runs
from agents.models import Message
from audit import loop_append
from audit.maintenance import verify_chain
from audit.models import AuditEvent, PendingAuditEvent
from audit.pg_append import APPEND_LOCK_KEY
from billing.models import UsageRecord
from relay.eventloop import pg
from tests import test_loop_connection
from tests.conftest import require_postgres
from tests.reconciled import assert_reconciled
from tests.support.streams import parse_sse

pytestmark = pytest.mark.django_db(transaction=True)
secret = test_loop_connection.secret  # the fixture: an API key for fake-large on the fake upstream


@pytest.fixture(autouse=True)
def _postgres():
    require_postgres()
    yield
    pg.close_all()


@pytest.fixture
def trips(monkeypatch):
    """The closings' round trips on the loop's connection, and the batches a DB thread wrote."""
    seen = {"loop": [], "thread": 0}
    session = pg.session

    @asynccontextmanager
    async def counted(lane=pg.OPENINGS):
        async with session(lane) as execute:
            async def noted(sql, params):
                if lane == pg.CLOSINGS:
                    seen["loop"].append(sql.split(";")[0])
                return await execute(sql, params)

            yield noted

    monkeypatch.setattr(pg, "session", counted)
    write = runs._CLOSINGS._write

    def on_thread(writes):
        seen["thread"] += 1
        return write(writes)

    monkeypatch.setattr(runs._CLOSINGS, "_write", on_thread)
    return seen


def ask(server, secret) -> dict:
    body = {"query": "Say hello.", "agent_type": "general", "model": "fake-large", "cache": False}
    response = httpx.post(f"{server.url}/api/v1/stream", json=body, headers={"Authorization": f"Bearer {secret}"},
                          timeout=30)
    assert response.status_code == 200
    events = parse_sse(response.iter_lines())
    assert events[-1]["status"] == "complete"
    return events[0]


def run_events(message_id) -> list:
    return list(AuditEvent.objects.filter(action="agent.run", resource=f"message:{message_id}"))


def test_a_closing_commits_on_the_loop_in_two_round_trips(asgi_server, secret, trips):
    start = ask(asgi_server, secret)

    assert trips["thread"] == 0
    assert trips["loop"] == ["BEGIN", "SELECT * FROM audit_chain(%s::jsonb)"]
    answer = Message.objects.get(pk=start["message_id"])
    assert answer.status == "complete" and answer.content and answer.output_tokens > 0
    record = UsageRecord.objects.get(message_id=answer.pk)
    assert record.output_tokens == answer.output_tokens and record.cost > 0
    [event] = run_events(answer.pk)
    assert event.metadata["run_id"] == record.request_id and event.hash
    assert verify_chain().ok
    assert_reconciled()


def test_a_held_append_lock_queues_the_closings_event_and_the_drain_chains_it(asgi_server, secret, trips,
                                                                               monkeypatch):
    queued = threading.Event()
    drain = loop_append._drain_queued

    async def draining():
        queued.set()  # the closing's transaction committed with its event queued
        await drain()  # which waits for the other writer's lock, as that writer lets it go soon

    monkeypatch.setattr(loop_append, "_drain_queued", draining)
    params = pg.wrapper().get_connection_params()
    params.pop("cursor_factory", None)
    holder = psycopg.connect(**params)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [APPEND_LOCK_KEY])  # another writer appends
        with ThreadPoolExecutor(1) as pool:
            answered = pool.submit(ask, asgi_server, secret)
            assert queued.wait(30)
            assert trips["thread"] == 0 and trips["loop"] == ["BEGIN", "COMMIT"]
            assert AuditEvent.objects.filter(action="agent.run").count() == 0
            assert PendingAuditEvent.objects.filter(action="agent.run").count() == 1
            assert UsageRecord.objects.count() == 1
            holder.commit()  # the other writer is done
            start = answered.result(30)
    finally:
        holder.close()
    assert len(run_events(start["message_id"])) == 1 and not PendingAuditEvent.objects.exists()
    assert verify_chain().ok
    assert_reconciled()


def test_a_closing_refused_midway_on_the_loop_is_written_once_by_a_thread(asgi_server, secret, trips, monkeypatch):
    # The rows and the lock are in, then a statement fails before the commit.
    monkeypatch.setattr(loop_append, "_CHAIN_AND_COMMIT", "SELECT * FROM audit_chain(%s::jsonb); SELECT 1 / 0; COMMIT")
    start = ask(asgi_server, secret)

    assert trips["loop"] == ["BEGIN", "SELECT * FROM audit_chain(%s::jsonb)"] and trips["thread"] == 1
    [held] = [held for (_, lane), held in pg._held.items() if lane == pg.CLOSINGS]
    assert held.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # rolled back, kept
    assert UsageRecord.objects.filter(message_id=start["message_id"]).count() == 1
    assert len(run_events(start["message_id"])) == 1
    assert Message.objects.get(pk=start["message_id"]).status == "complete"
    assert verify_chain().ok
    assert_reconciled()
