"""The event loop's own PostgreSQL connection (relay/eventloop/pg.py), and the opening written on it.

- A statement runs on the loop and returns each statement's rows; a run's opening takes no trip to
  the DB threads (the opening is on the way to every first token).
- A failed statement leaves no transaction open; a cancelled one stops at the server (psycopg
  cancels it) or its connection is dropped; the next call works either way. Errors are Django's, so a lost database is a 503 as anywhere else.
- Every loop's connection closes at teardown and shutdown: nobody stays connected.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, OperationalError, connection

from accounts.actions.keys import create_api_key
from agents.actions.endpoints import create_endpoint
from agents.models import Conversation, Message
from billing.models import ModelPrice
from relay.eventloop import group_commit, pg
from relay.eventloop.db import close_db_threads
from tests.conftest import require_postgres
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres(settings):
    require_postgres()
    settings.RELAY_DB_THREAD_SENSITIVE = False  # as a serving process runs
    yield
    pg.close_all()


def disconnected(pids: list[int], seconds: float = 10) -> bool:
    """Whether PostgreSQL has let these sessions go. A session whose client closed its socket leaves
    pg_stat_activity when its backend exits, a moment later: polled, up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
            if cursor.fetchone()[0] == 0:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def test_statements_run_on_the_loop_and_return_each_statements_rows():
    async def scenario():
        return await pg.execute_sets("SELECT 1; SELECT %s::text, %s::int; SET LOCAL work_mem = '8MB'", ["é", 7])

    assert asyncio.run(scenario()) == [[(1,)], [("é", 7)], None]


def test_a_failed_statement_leaves_no_transaction_open():
    sql = ("BEGIN; CREATE TEMP TABLE IF NOT EXISTS loop_probe (id int PRIMARY KEY); "
           "INSERT INTO loop_probe VALUES (1), (1); COMMIT")

    async def scenario():
        with pytest.raises(IntegrityError):  # Django's, not psycopg's
            await pg.execute_sets(sql, [])
        held = pg._state().connection
        status = held.info.transaction_status
        after = await pg.execute_sets("SELECT 2", [])
        return held, status, after, pg._state().connection

    before, status, after, again = asyncio.run(scenario())
    assert status == psycopg.pq.TransactionStatus.IDLE  # rolled back, not left in a failed transaction
    assert after == [[(2,)]] and again is before  # and kept: its state is known


def sleeping() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%%'")
        return cursor.fetchone()[0]


def test_a_cancelled_statement_stops_and_the_next_call_works():
    async def scenario():
        task = asyncio.ensure_future(pg.execute_sets("SELECT pg_sleep(30)", []))
        while not await asyncio.to_thread(sleeping):  # the statement is at the server
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        running = await asyncio.to_thread(sleeping)
        return running, await pg.execute_sets("SELECT 3", [])

    running, after = asyncio.run(scenario())
    assert running == 0  # not left sleeping on the server, holding the loop's connection
    assert after == [[(3,)]]


def test_a_database_that_cannot_be_reached_is_djangos_operational_error(monkeypatch):
    async def unreachable():
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(pg, "_connect", unreachable)
    with pytest.raises(OperationalError):  # relay.faults answers it 503, as any lost database
        asyncio.run(pg.execute_sets("SELECT 1", []))


def test_every_loops_connection_closes():
    pids = []

    async def connect():
        await pg.execute_sets("SELECT 1", [])
        pids.append(pg._state().connection.info.backend_pid)

    for _ in range(4):  # four loops, as four test servers one after the other
        asyncio.run(connect())
    assert disconnected(pids[:-1])  # each new loop closed the connections of the loops gone before it
    assert not disconnected(pids[-1:], seconds=0)  # the last one's is held until someone closes it

    pg.close_all()

    assert disconnected(pids[-1:])


def test_shutdown_also_closes_the_shared_sync_threads_connection():
    """asgiref's process-wide thread for thread-sensitive calls made outside a request's context kept
    its connection past the pool's close, and a test database from dropping."""

    def backend_pid():
        with connection.cursor() as cursor:  # this thread's own connection
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    async def outside_a_request():
        return await sync_to_async(backend_pid, thread_sensitive=True)()

    pid = asyncio.run(outside_a_request())
    assert pid != backend_pid()  # not the test's own connection
    assert not disconnected([pid], seconds=0)

    close_db_threads()

    assert disconnected([pid])


def test_off_without_postgresql_or_inside_a_tests_transaction(settings):
    assert pg.available()
    settings.RELAY_DB_LOOP_WRITES = False
    assert not pg.available()
    settings.RELAY_DB_LOOP_WRITES = True
    settings.RELAY_DB_THREAD_SENSITIVE = True  # the ORM's writes would be inside the test's transaction
    assert not pg.available()


@pytest.fixture
def secret(users, fake_upstream):
    create_endpoint("fake-large", deployments=[
        {"name": "only", "base_url": fake_upstream.base_url, "upstream_model": "fake-large"}])
    ModelPrice.objects.create(model="fake-large", input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
    return create_api_key(users["user"], "loop").secret


def test_an_opening_takes_no_trip_to_the_db_threads(asgi_server, secret, monkeypatch):
    """Control: agents.actions.runs._open_on_loop. Without it the group commit sends the opening to a
    DB thread (run_db), and this fails."""
    trips, run_db = [], group_commit.run_db

    async def counted(fn, *args):
        trips.append(getattr(fn, "__self__", None))
        return await run_db(fn, *args)

    monkeypatch.setattr(group_commit, "run_db", counted)
    from agents.actions import runs

    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": "fake-large", "messages": [{"role": "user", "content": "Say hello."}]}
    first = httpx.post(f"{asgi_server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    conversation = Conversation.objects.get()
    turn = {"query": "And again.", "agent_type": "general", "model": "fake-large", "cache": False,
            "conversation_id": str(conversation.pk)}
    second = httpx.post(f"{asgi_server.url}/api/v1/query", json=turn, headers=headers, timeout=30)
    assert second.status_code == 200, second.text

    assert runs._OPENINGS not in trips  # the closings still go to a thread: they are the ORM's
    assert Message.objects.filter(conversation=conversation).count() == 4  # both turns, a continued one too
    assert set(Message.objects.values_list("status", flat=True)) == {"complete"}
    assert_reconciled()


def test_the_openings_statement_goes_out_before_the_deployment_is_acquired(asgi_server, secret, monkeypatch):
    """The opening's commit is the longer of the two trips that overlap before the model is asked, so
    it is sent first and the acquire's runs inside it. Control: agents.router._acquire_a_turn_later's
    turn; acquired at once, the acquire's Lua call is sent first and this fails."""
    from agents import router

    order, execute_sets, acquire = [], pg.execute_sets, router.acquire

    async def opening(*args, **kwargs):
        order.append("opening")
        return await execute_sets(*args, **kwargs)

    async def acquiring(*args, **kwargs):
        order.append("acquire")
        return await acquire(*args, **kwargs)

    monkeypatch.setattr(pg, "execute_sets", opening)
    monkeypatch.setattr(router, "acquire", acquiring)
    headers = {"Authorization": f"Bearer {secret}"}
    for content in ("Say hello.", "Say it again."):
        body = {"model": "fake-large", "messages": [{"role": "user", "content": content}], "stream": True}
        with httpx.stream("POST", f"{asgi_server.url}/v1/chat/completions", json=body, headers=headers,
                          timeout=30) as response:
            assert response.status_code == 200
            assert "data: [DONE]" in response.read().decode()

    assert order[:2] == ["opening", "acquire"] and order[2:4] == ["opening", "acquire"], order
    assert_reconciled()


def test_a_turn_in_someone_elses_conversation_is_refused_on_the_loop(asgi_server, secret, users):
    """The lock-and-check of a continued conversation (agents.actions.run_rows) holds on the loop path:
    a conversation that is not the caller's is a 404, and nothing of the turn is written."""
    other = Conversation.objects.create(organization=users["admin"].organization, user=users["admin"],
                                        agent="general", title="not yours")
    turn = {"query": "Read it.", "agent_type": "general", "model": "fake-large", "cache": False,
            "conversation_id": str(other.pk)}

    response = httpx.post(f"{asgi_server.url}/api/v1/query", json=turn, headers={"Authorization": f"Bearer {secret}"},
                          timeout=30)

    assert response.status_code == 404, response.text
    assert not Message.objects.exists()
    assert_reconciled()
