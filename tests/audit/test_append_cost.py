"""What an append costs PostgreSQL in statements, and that its own transaction never outlives a failure.

An append is the hot path of every audited action: on a busy machine each statement costs the
writer's CPU (Django's cursor, psycopg) and the server's, so the number of statements is the
figure to hold. PostgreSQL only (SQLite has one writer and no queue).
"""

import contextlib

import pytest
from django.db import DatabaseError, DataError, connection, transaction
from django.test.utils import CaptureQueriesContext
from psycopg.pq import TransactionStatus

from audit import services
from audit.maintenance import verify_chain
from audit.models import AuditEvent, PendingAuditEvent
from tests.audit.test_append_queue import lock_held_by_a_slow_action, queue_without_draining
from tests.conftest import require_postgres

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _postgres():
    require_postgres()


def statements(action) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        action()
    return [query["sql"] for query in captured.captured_queries]


def test_an_append_outside_a_transaction_is_two_round_trips_and_commits():
    services.record("test.first")
    sent = statements(lambda: services.record("test.second", metadata={"n": 1}))
    # The lock, the head (and BEGIN) in one; the insert and COMMIT in the other.
    assert len(sent) == 2, sent
    assert connection.connection.info.transaction_status == TransactionStatus.IDLE
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.first", "test.second"]
    assert verify_chain().ok


def advisory_locks() -> int:
    """The advisory locks this connection holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        return cursor.fetchone()[0]


def test_an_append_outside_a_transaction_lets_go_of_the_append_lock():
    services.record("test.first")
    # Outside a transaction the append lock is a session lock (it spans two transactions): let go of
    # after the chained event's commit, or every later append would queue behind it.
    assert advisory_locks() == 0
    with lock_held_by_a_slow_action():  # another connection can take it
        pass
    assert verify_chain().ok


def test_a_queued_append_outside_a_transaction_is_one_round_trip_and_commits():
    drained = []

    def drain_later(*args, locked=False, **kwargs):  # the slow action still holds the append lock
        drained.append(locked)
        return 0

    original = services.drain
    services.drain = drain_later
    try:
        with lock_held_by_a_slow_action():
            sent = statements(lambda: services.record("test.queued"))
            # BEGIN, the lock attempt and the queue insert, COMMIT, then the drain lock: one round trip.
            assert len(sent) == 1, sent
            assert connection.connection.info.transaction_status == TransactionStatus.IDLE
            assert drained == [True]  # it became the drainer, after its commit
            services.pg_append.release_drain_lock(connection, look=False)
            assert PendingAuditEvent.objects.get().action == "test.queued"  # committed: visible here
    finally:
        services.drain = original
    assert_queued_event_chained_after_the_slow_action()


def assert_queued_event_chained_after_the_slow_action():
    assert services.drain() == 1
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.slow_action", "test.queued"]
    assert verify_chain().ok


def test_a_queued_append_in_a_transaction_is_one_statement():
    original = services.drain
    services.drain = lambda *args, **kwargs: 0  # drained below, once the slow action has let go
    try:
        with lock_held_by_a_slow_action():
            with transaction.atomic():
                sent = statements(lambda: services.record("test.queued"))
            assert len(sent) == 1, sent  # the lock attempt and the queue insert are one statement
            assert PendingAuditEvent.objects.get().action == "test.queued"
    finally:
        services.drain = original
    assert_queued_event_chained_after_the_slow_action()


def test_a_drain_batch_is_the_same_few_statements_however_many_are_queued():
    services.record("test.before")
    queue_without_draining(*(f"test.queued_{n}" for n in range(50)))
    sent = statements(services.drain)
    # The drain lock; the append lock, head and queue read; the move and COMMIT; letting go and looking again.
    assert len(sent) == 4, sent
    assert AuditEvent.objects.count() == 51 and not PendingAuditEvent.objects.exists()
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True))[:3] == [
        "test.before", "test.queued_0", "test.queued_1"]
    assert verify_chain().ok


@pytest.mark.parametrize("queued", [False, True])
def test_an_over_long_value_is_refused_not_truncated(queued):
    """The events travel as JSON; each value still gets its column's type, length included."""
    original = services.drain
    services.drain = lambda *args, **kwargs: 0
    try:
        with contextlib.ExitStack() as stack:
            if queued:
                stack.enter_context(lock_held_by_a_slow_action())
            with pytest.raises(DataError, match="too long"), transaction.atomic():
                services.record("test.long_prefix", api_key="k" * 17)  # api_key_prefix is 16 characters
    finally:
        services.drain = original
    assert not AuditEvent.objects.filter(action="test.long_prefix").exists()
    assert not PendingAuditEvent.objects.exists()


@pytest.fixture
def chain_refuses_inserts():
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
            CREATE TRIGGER test_refuse BEFORE INSERT ON audit_auditevent FOR EACH ROW EXECUTE FUNCTION test_refuse();
        """)
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse ON audit_auditevent; DROP FUNCTION test_refuse()")


def test_a_failed_append_outside_a_transaction_leaves_no_transaction_open(chain_refuses_inserts):
    with pytest.raises(DatabaseError, match="refused by the test"):
        services.record("test.refused")
    # Its own transaction was rolled back: the connection is idle, and nothing was recorded; the
    # append lock it took (a session lock, which a rollback keeps) was let go of.
    assert connection.connection.info.transaction_status == TransactionStatus.IDLE
    assert not AuditEvent.objects.exists() and not PendingAuditEvent.objects.exists()
    assert advisory_locks() == 0
