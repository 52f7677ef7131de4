"""The newest events cannot be deleted undetected: Celery beat signs the chain head every
RELAY_AUDIT_CHECKPOINT_SECONDS, and verify_audit fails when the chain does not reach the latest
signed checkpoint. Only the events since that checkpoint are unprotected (docs/security.md)."""

import datetime as dt
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import actions
from audit import jobs as audit_jobs
from audit.chain import compute_hash
from audit.head_checkpoints import CheckpointRefused, forget
from audit.maintenance import write_head_checkpoint
from audit.models import AuditEvent, AuditHeadCheckpoint
from audit.services import appending_together, record
from relay import periodic
from tests.audit.conftest import raw, triggers_lifted
from tests.conftest import require_redis

db = pytest.mark.django_db


def chain_of(n: int) -> None:
    for i in range(n):
        record(actions.AGENT_RUN, resource=f"conversation:{i}", metadata={"i": i})


def delete_events(from_sequence: int, to_sequence: int = 10**9) -> None:
    with triggers_lifted():
        raw("DELETE FROM audit_auditevent WHERE sequence BETWEEN %s AND %s", [from_sequence, to_sequence])


def verify(**options) -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out, **options)
    return out.getvalue()


def verify_fails(**options) -> str:
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit", **options)
    return str(failure.value)


def test_deleting_the_newest_events_after_a_checkpoint_fails_verify_audit_in_another_process(manage_py):
    chain_of(5)
    assert audit_jobs.audit_head_checkpoint()["sequence"] == 5  # what Celery beat runs
    chain_of(2)
    intact = manage_py("verify_audit")
    assert intact.returncode == 0 and intact.stdout.startswith("7 events verified"), intact.stderr
    delete_events(4)  # the newest four: two the checkpoint vouches for, two after it
    result = manage_py("verify_audit")
    assert result.returncode != 0, result.stdout
    assert "the chain does not reach the latest checkpoint" in result.stderr.lower(), result.stderr
    assert "#3" in result.stderr and "#5" in result.stderr, result.stderr


def test_checkpoint_audit_writes_one_now_for_operators(manage_py):
    chain_of(3)
    written = manage_py("checkpoint_audit")
    assert written.returncode == 0 and "#3" in written.stdout, written.stderr
    checkpoint = AuditHeadCheckpoint.objects.get()
    assert (checkpoint.sequence, checkpoint.hash) == AuditEvent.objects.values_list("sequence", "hash").get(sequence=3)
    delete_events(3)
    assert "does not reach the latest checkpoint" in verify_fails()


@db
def test_events_since_the_latest_checkpoint_can_still_be_deleted_undetected():
    # The documented limit: only what a checkpoint vouches for is protected.
    chain_of(5)
    write_head_checkpoint()
    chain_of(2)
    delete_events(6)
    assert verify().startswith("5 events verified")


@db
def test_a_tail_rewritten_consistently_no_longer_matches_the_checkpoint():
    chain_of(5)
    write_head_checkpoint()
    rewrite_from(3)  # #3 rewritten, everything after it relinked and rehashed
    message = verify_fails()
    assert "#5" in message and "checkpoint" in message


@db
def test_events_deleted_and_replaced_by_new_appends_do_not_match_the_checkpoint():
    chain_of(5)
    write_head_checkpoint()
    delete_events(4)
    chain_of(3)  # the chain goes on from #3: #4, #5, #6 are new events
    message = verify_fails()
    assert "#5" in message and "checkpoint" in message


@db
def test_a_checkpoint_with_a_wrong_signature_fails(settings):
    chain_of(3)
    write_head_checkpoint()
    with triggers_lifted():
        raw("UPDATE audit_auditheadcheckpoint SET sequence = 2")
    assert "signature" in verify_fails()
    with triggers_lifted():
        raw("UPDATE audit_auditheadcheckpoint SET sequence = 3")
    assert verify().startswith("3 events verified")
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    assert "signature" in verify_fails()


@db
def test_a_forged_checkpoint_cannot_vouch_for_anything():
    chain_of(3)
    raw("INSERT INTO audit_auditheadcheckpoint (sequence, hash, created_at, signature, previous_signature) "
        "VALUES (%s, %s, %s, %s, '')", [9, "f" * 64, timezone.now(), "0" * 64])
    assert "signature" in verify_fails()


@db
def test_writing_checkpoints_leaves_the_chain_intact():
    assert write_head_checkpoint() is None  # nothing to vouch for yet
    chain_of(3)
    write_head_checkpoint()
    write_head_checkpoint()  # an idle interval: the same head again
    with transaction.atomic(), appending_together():
        record(actions.AGENT_RUN, resource="conversation:a")
        record(actions.AGENT_RUN, resource="conversation:b")
    write_head_checkpoint()
    assert list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True)) == [1, 2, 3, 4, 5]
    assert list(AuditHeadCheckpoint.objects.values_list("sequence", flat=True)) == [5, 3, 3]
    assert verify().startswith("5 events verified")


@db
def test_verify_audit_can_require_a_recent_checkpoint():
    chain_of(2)
    now = timezone.now()
    assert "no checkpoint" in verify_fails(max_checkpoint_age=600).lower()
    write_head_checkpoint(now=now - dt.timedelta(seconds=900))
    assert "no checkpoint" in verify_fails(max_checkpoint_age=600).lower()  # beat stopped, or newer ones deleted
    write_head_checkpoint(now=now - dt.timedelta(seconds=60))
    assert verify(max_checkpoint_age=600).startswith("2 events verified")
    with pytest.raises(CommandError, match="above 0"):
        call_command("verify_audit", max_checkpoint_age=0)


@db
def test_prune_keeps_the_protection_and_drops_checkpoints_of_pruned_events():
    chain_of(4)
    write_head_checkpoint()
    cutoff = timezone.now() + dt.timedelta(microseconds=1)
    chain_of(2)
    write_head_checkpoint()
    call_command("prune_audit", before=cutoff.isoformat())
    assert list(AuditHeadCheckpoint.objects.values_list("sequence", flat=True)) == [6]
    assert verify().startswith("3 events verified")  # #5, #6 and the audit.pruned event
    delete_events(6)
    assert "does not reach the latest checkpoint" in verify_fails()


def test_beat_writes_a_checkpoint_every_configured_interval(manage_py, settings):
    assert settings.CELERY_BEAT_SCHEDULE["audit-head-checkpoint"] == {
        "task": "relay.audit_head_checkpoint", "schedule": float(settings.RELAY_AUDIT_CHECKPOINT_SECONDS)}
    show = "from django.conf import settings; print(settings.CELERY_BEAT_SCHEDULE.get('audit-head-checkpoint'))"

    def scheduled(seconds: str) -> str:
        return manage_py("shell", "-c", show, RELAY_AUDIT_CHECKPOINT_SECONDS=seconds).stdout.strip().splitlines()[-1]

    assert "'schedule': 120.0" in scheduled("120")
    assert scheduled("0") == "None"


def test_the_checkpoint_is_written_once_per_cluster(manage_py):
    require_redis()
    chain_of(2)
    task = "import json; from audit.jobs import audit_head_checkpoint; print(json.dumps(audit_head_checkpoint()))"
    with periodic.single_writer("audit-head") as mine:  # another instance's beat task, running now
        assert mine
        skipped = manage_py("shell", "-c", task)
    assert json.loads(skipped.stdout.strip().splitlines()[-1]) == {"skipped": True}, skipped.stderr
    assert not AuditHeadCheckpoint.objects.exists()
    written = manage_py("shell", "-c", task)
    assert json.loads(written.stdout.strip().splitlines()[-1]) == {"ok": True, "sequence": 2}, written.stderr
    assert AuditHeadCheckpoint.objects.get().sequence == 2


# --- The series: linked, verified before signing, its newest member remembered outside the database

def rewrite_from(sequence: int, resource: str = "rewritten") -> None:
    """Change event #sequence and rehash everything after it: a consistent chain, but not the one signed."""
    events = list(AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"))
    prev_hash = events[0].prev_hash
    with triggers_lifted():
        for event in events:
            event.resource = resource if event.sequence == sequence else event.resource
            event.prev_hash = prev_hash
            event.hash = prev_hash = compute_hash(prev_hash, event)
            raw("UPDATE audit_auditevent SET resource = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [event.resource, event.prev_hash, event.hash, event.pk])


def delete_checkpoints(from_sequence: int, to_sequence: int = 10**9) -> None:
    with triggers_lifted():
        raw("DELETE FROM audit_auditheadcheckpoint WHERE sequence BETWEEN %s AND %s", [from_sequence, to_sequence])


@db
def test_history_rewritten_behind_deleted_checkpoints_is_refused_and_fails_verify():
    # The attack: rewrite event #2 and rehash the rest, delete every checkpoint that vouched for
    # the old hashes, and let beat sign the forged head.
    chain_of(1)
    write_head_checkpoint()
    chain_of(4)
    write_head_checkpoint()
    rewrite_from(2)
    delete_checkpoints(2)
    with pytest.raises(CheckpointRefused, match="is gone from the database"):
        write_head_checkpoint()
    assert list(AuditHeadCheckpoint.objects.values_list("sequence", flat=True)) == [1]  # nothing was signed
    assert audit_jobs.audit_head_checkpoint()["ok"] is False  # beat's job reports it too
    assert "#5" in verify_fails() and "gone from the database" in verify_fails()


def test_verify_audit_in_another_process_sees_the_checkpoint_this_one_signed_is_gone(manage_py):
    require_redis()  # the remembered checkpoint is shared through Redis
    chain_of(3)
    write_head_checkpoint()
    rewrite_from(2)
    delete_checkpoints(0)
    result = manage_py("verify_audit")
    assert result.returncode != 0 and "gone from the database" in result.stderr, (result.stdout, result.stderr)
    refused = manage_py("checkpoint_audit")
    assert refused.returncode != 0 and "Nothing was signed" in refused.stderr, (refused.stdout, refused.stderr)


@db
def test_a_checkpoint_removed_from_the_middle_of_the_series_breaks_the_next_link():
    for _ in range(3):
        chain_of(2)
        write_head_checkpoint()
    assert verify().startswith("6 events verified")
    delete_checkpoints(4, 4)
    message = verify_fails()
    assert "does not link to the checkpoint before it" in message and "#6" in message


@db
def test_no_checkpoint_is_signed_over_a_chain_broken_since_the_previous_one():
    chain_of(3)
    write_head_checkpoint()
    chain_of(2)
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET resource = 'altered' WHERE sequence = 4")
    with pytest.raises(CheckpointRefused, match="#4"):
        write_head_checkpoint()
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET resource = 'conversation:0' WHERE sequence = 4")
    rewrite_from(3)  # the previous checkpoint's own event, relinked after it
    with pytest.raises(CheckpointRefused, match="#4"):
        write_head_checkpoint()
    assert AuditHeadCheckpoint.objects.count() == 1


@db
def test_a_forged_latest_checkpoint_is_not_linked_to():
    chain_of(3)
    write_head_checkpoint()
    raw("INSERT INTO audit_auditheadcheckpoint (sequence, hash, created_at, signature, previous_signature) "
        "VALUES (%s, %s, %s, %s, '')", [3, "f" * 64, timezone.now(), "0" * 64])
    with pytest.raises(CheckpointRefused, match="invalid signature"):
        write_head_checkpoint()


@db
def test_after_restoring_a_backup_the_operator_says_so_and_signing_goes_on():
    chain_of(2)
    write_head_checkpoint()
    chain_of(1)
    write_head_checkpoint()
    delete_checkpoints(3, 3)  # the backup was taken before the newest checkpoint
    with triggers_lifted():
        raw("DELETE FROM audit_auditevent WHERE sequence = 3")
    with pytest.raises(CommandError, match="--after-restore"):
        call_command("checkpoint_audit")
    call_command("checkpoint_audit", after_restore=True)
    assert verify().startswith("2 events verified")
    chain_of(1)
    write_head_checkpoint()
    assert verify().startswith("3 events verified")


@db
def test_without_the_remembered_checkpoint_a_rewrite_behind_deleted_checkpoints_goes_undetected():
    # The documented limit: the copy outside the database is what catches it. If Redis lost it
    # too, only the log of signed checkpoints (or copies kept elsewhere) still can.
    chain_of(3)
    write_head_checkpoint()
    rewrite_from(2)
    delete_checkpoints(0)
    forget()
    write_head_checkpoint()
    assert verify().startswith("3 events verified")


@db
def test_the_database_refuses_to_change_or_delete_checkpoints():
    if connection.vendor != "postgresql":
        pytest.skip("the checkpoint tables' triggers are PostgreSQL's (SQLite is for development)")
    chain_of(2)
    write_head_checkpoint()
    for statement in ("UPDATE audit_auditheadcheckpoint SET sequence = 1", "DELETE FROM audit_auditheadcheckpoint",
                      "TRUNCATE audit_auditheadcheckpoint"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            raw(statement)
    assert AuditHeadCheckpoint.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_flush_forgets_the_remembered_checkpoint_with_the_trail():
    chain_of(2)
    write_head_checkpoint()
    call_command("flush", interactive=False, verbosity=0)
    chain_of(1)
    assert write_head_checkpoint().sequence == 1  # not refused for a checkpoint flush removed
    assert verify().startswith("1 events verified")


@db
def test_checkpoints_are_signed_and_verified_with_the_cache_down(monkeypatch, caplog):
    from django.core.cache import cache

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    chain_of(2)
    for method in ("get", "set", "delete"):
        monkeypatch.setattr(cache, method, down)
    assert write_head_checkpoint().sequence == 2
    assert verify().startswith("2 events verified")
    assert "cache is unavailable" in caplog.text
