"""Writers do not take turns behind the append lock: they queue, and whoever commits chains the queue.

PostgreSQL only (SQLite has one writer and never queues). Each test holds the lock in one
thread, as a slow action's transaction would, and watches what another writer does meanwhile.
"""

import threading
from contextlib import contextmanager

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from accounts.models import User
from audit import services
from audit.maintenance import verify_chain
from audit.models import AuditEvent, PendingAuditEvent
from tests.conftest import require_postgres

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

WAIT = 30  # seconds; a bound for a stuck test, never reached when the code works


@pytest.fixture(autouse=True)
def _postgres():
    require_postgres()


def in_thread(target, *args) -> threading.Thread:
    def run():
        try:
            target(*args)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextmanager
def lock_held_by_a_slow_action():
    """Another connection records an event and keeps its transaction (and the lock) open."""
    holding, release = threading.Event(), threading.Event()

    def slow_action():
        with transaction.atomic():
            services.record("test.slow_action")
            holding.set()
            assert release.wait(WAIT)

    thread = in_thread(slow_action)
    assert holding.wait(WAIT)
    try:
        yield
    finally:
        release.set()
        thread.join(WAIT)


def test_a_writer_commits_without_waiting_for_the_lock_and_is_chained_after_the_holder():
    committed, done = threading.Event(), threading.Event()

    def quick_action():
        with transaction.atomic():
            services.record("test.quick_action")
        done.set()  # after its drain: that waits for the lock

    original = services.drain

    def drain_after_commit(*args, **kwargs):  # what the writer runs once its transaction committed
        committed.set()
        return original(*args, **kwargs)

    with lock_held_by_a_slow_action():
        services.drain = drain_after_commit
        try:
            in_thread(quick_action)
            assert committed.wait(WAIT), "the second writer waited for the lock before committing its change"
        finally:
            services.drain = original
        # Its event is durable in the queue while the slow action still holds the lock.
        assert list(PendingAuditEvent.objects.values_list("action", flat=True)) == ["test.quick_action"]
        assert not done.is_set()
    assert done.wait(WAIT)
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.slow_action", "test.quick_action"]
    assert not PendingAuditEvent.objects.exists()
    assert verify_chain().ok


def test_a_queued_event_of_a_rolled_back_change_never_exists():
    queued = threading.Event()

    def failing_action():
        with pytest.raises(RuntimeError), transaction.atomic():
            services.record("test.rolled_back")
            queued.set()
            raise RuntimeError("the change fails after its event was recorded")

    with lock_held_by_a_slow_action():
        in_thread(failing_action).join(WAIT)
        assert queued.is_set()
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["test.slow_action"]
    assert not PendingAuditEvent.objects.exists()


def queue_without_draining(*actions: str) -> None:
    """What a process killed between its commit and its drain leaves behind."""
    PendingAuditEvent.objects.bulk_create(
        [PendingAuditEvent(time=timezone.now(), action=a, status="success", metadata={}) for a in actions])


def test_verify_audit_chains_what_a_killed_writer_left_queued(manage_py):
    services.record("test.before")
    queue_without_draining("test.left_1", "test.left_2")
    assert AuditEvent.objects.count() == 1
    done = manage_py("verify_audit")
    assert done.returncode == 0 and "3 events" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.before", "test.left_1", "test.left_2"]
    assert not PendingAuditEvent.objects.exists()


def test_the_head_checkpoint_job_chains_the_queue_before_signing():
    from audit.jobs import audit_head_checkpoint

    queue_without_draining("test.left")
    assert audit_head_checkpoint()["sequence"] == 1  # what Celery beat runs
    assert AuditEvent.objects.get().action == "test.left"
    assert verify_chain().ok


def test_a_queued_event_cannot_be_changed_or_removed_outside_the_drain():
    queue_without_draining("test.queued")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_pendingauditevent SET action = 'test.forged'")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_pendingauditevent")
    assert services.drain() == 1
    assert AuditEvent.objects.get().action == "test.queued"


def test_a_user_deleted_while_their_event_is_queued_keeps_the_event():
    user = User.objects.create_user("leaving", password="x")
    user_id = user.pk
    PendingAuditEvent.objects.create(time=timezone.now(), action="test.by_user", status="success", metadata={},
                                     actor_id=user.pk, actor_ref=user.pk, actor_name="leaving")
    user.delete()  # ON DELETE SET NULL reaches the queued row too: the drain's insert stays valid
    assert services.drain() == 1
    event = AuditEvent.objects.get()
    assert (event.actor_id, event.actor_ref, event.actor_name) == (None, user_id, "leaving")
    assert verify_chain().ok


def test_an_event_queued_while_another_process_drains_is_chained_by_that_drainer():
    """The writer does not wait for the drainer; the drainer looks again after letting go."""
    queue_without_draining("test.first")
    drainer_done_batches, writer_returned = threading.Event(), threading.Event()
    original = services._drain_batch
    drainer = {}

    def drain_batch(connection, using):
        chained = original(connection, using)
        if chained < services.DRAIN_BATCH and threading.get_ident() == drainer.get("ident"):
            # The drainer took the last of the queue and still holds the drain lock: a writer commits now.
            drainer_done_batches.set()
            assert writer_returned.wait(WAIT)
        return chained

    def drain_in_another_thread():
        drainer["ident"] = threading.get_ident()
        drainer["chained"] = services.drain()

    def writer():
        services.record("test.second")  # outside a transaction: its own
        writer_returned.set()

    services._drain_batch = drain_batch
    try:
        thread = in_thread(drain_in_another_thread)
        assert drainer_done_batches.wait(WAIT)
        # The writer finds the append lock taken (by a slow action, chained after test.first): it
        # queues, commits, finds the drain lock taken too, and returns without draining.
        with lock_held_by_a_slow_action():
            in_thread(writer).join(WAIT)
            assert writer_returned.is_set()
        thread.join(WAIT)
    finally:
        services._drain_batch = original
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", flat=True)) == [
        "test.first", "test.slow_action", "test.second"]
    assert drainer["chained"] == 2
    assert not PendingAuditEvent.objects.exists()
    assert verify_chain().ok
