"""The trail is append-only, hash-chained, and verify_audit names the first broken event."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import User
from audit import actions
from audit.chain import GENESIS, compute_hash
from audit.models import AppendOnlyError, AuditCheckpoint, AuditEvent
from audit.services import record
from tests.audit.conftest import raw, triggers_lifted

pytestmark = pytest.mark.django_db


def verify() -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def verify_fails() -> str:
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit")
    return str(failure.value)


def chain_of(n: int) -> list[AuditEvent]:
    for i in range(n):
        record(actions.AGENT_RUN, resource=f"conversation:{i}", metadata={"i": i})
    return list(AuditEvent.objects.order_by("sequence"))


def test_events_link_into_a_chain_and_verify():
    events = chain_of(3)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(events, events[1:], strict=False))
    assert all(compute_hash(e.prev_hash, e) == e.hash for e in events)
    assert verify().startswith("3 events verified")


def test_metadata_survives_the_database_round_trip_unchanged():
    record(actions.BUDGET_CREATED, metadata={"limit": Decimal("10.00"), "ratio": 1.0, "pi": 3.14159, "big": 1e20,
                                             "when": timezone.now(), "tags": {"b", "a"}, "nul": "a\x00b",
                                             "nested": {"z": [1, 2.5, None, True]}})
    event = AuditEvent.objects.get()
    assert event.metadata["limit"] == "10.00" and event.metadata["tags"] == ["a", "b"]
    assert "\x00" not in event.metadata["nul"]
    assert verify().startswith("1 events verified")


def test_the_model_refuses_changes_and_direct_writes(users):
    event = record(actions.LOGIN_SUCCEEDED, actor=users["user"])
    event.action = "forged"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.create(sequence=99, time=timezone.now(), action="x", status="success", prev_hash="0",
                                  hash="0")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create([AuditEvent(sequence=99)])


@pytest.mark.parametrize("statement", ["UPDATE audit_auditevent SET action = 'forged'",
                                       "UPDATE audit_auditevent SET actor_id = NULL, action = 'forged'",
                                       "DELETE FROM audit_auditevent"])
def test_the_database_refuses_update_and_delete(users, statement):
    event = record(actions.LOGIN_SUCCEEDED, actor=users["user"])
    count = AuditEvent.objects.count()
    with pytest.raises(DatabaseError), transaction.atomic():
        raw(statement)
    assert AuditEvent.objects.get(pk=event.pk).action == actions.LOGIN_SUCCEEDED
    assert AuditEvent.objects.count() == count


def test_postgres_refuses_truncate(db):
    if connection.vendor != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's")
    record(actions.AGENT_RUN)
    with pytest.raises(DatabaseError), transaction.atomic():
        raw("TRUNCATE audit_auditevent")
    assert AuditEvent.objects.count() == 1


def test_deleting_a_user_keeps_their_events_and_the_chain(users):
    victim = users["viewer"]
    record(actions.LOGIN_SUCCEEDED, actor=victim)
    victim_id = victim.pk
    User.objects.filter(pk=victim_id).delete()  # ON DELETE SET NULL is the one update the trigger allows
    event = AuditEvent.objects.get(action=actions.LOGIN_SUCCEEDED)
    assert event.actor_id is None and event.actor_ref == victim_id and event.actor_name == "viewer"
    assert "events verified" in verify()


def test_an_altered_event_is_named():
    events = chain_of(5)
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET resource = %s WHERE sequence = 3", ["conversation:999"])
    message = verify_fails()
    assert "#3" in message and "altered" in message and f"id {events[2].pk}" in message


def test_metadata_lengthened_past_the_recorded_limits_is_named_altered():
    # Recording cuts a string to 10,000 characters and a key to 200; the hash covers what is
    # stored, so text added beyond the cut cannot hide behind it.
    record(actions.AGENT_RUN, metadata={"prompt": "p" * 12_000, "k" * 300: 1})
    event = AuditEvent.objects.get()
    assert len(event.metadata["prompt"]) == 10_000 and "k" * 200 in event.metadata
    assert verify().startswith("1 events verified")
    for changed in ({**event.metadata, "prompt": event.metadata["prompt"] + " and one more instruction"},
                    {"prompt": event.metadata["prompt"], "k" * 200 + "-and-more": 1}):
        update = ("UPDATE audit_auditevent SET metadata = %s::jsonb WHERE id = %s" if connection.vendor == "postgresql"
                  else "UPDATE audit_auditevent SET metadata = %s WHERE id = %s")
        with triggers_lifted():
            raw(update, [json.dumps(changed), event.pk])
        message = verify_fails()
        assert "#1" in message and "altered" in message


def test_an_event_altered_with_its_hash_recomputed_breaks_the_link():
    chain_of(4)
    forged = AuditEvent.objects.get(sequence=2)
    forged.metadata = {"i": 42}
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET metadata = %s, hash = %s WHERE sequence = 2",
            ['{"i": 42}', compute_hash(forged.prev_hash, forged)])
    message = verify_fails()
    assert "#3" in message and "#2" in message and "prev_hash" in message


def test_a_deleted_event_is_named_missing():
    chain_of(5)
    with triggers_lifted():
        raw("DELETE FROM audit_auditevent WHERE sequence = 2")
    message = verify_fails()
    assert "#2 is missing" in message


def test_an_inserted_event_is_named():
    events = chain_of(3)
    # A well-formed event (its own hash is right) that does not link to the real head.
    fake = AuditEvent(sequence=4, time=timezone.now(), actor_name="mallory", action=actions.LOGIN_SUCCEEDED,
                      status="success", metadata={}, prev_hash=events[0].hash)
    fake.hash = compute_hash(fake.prev_hash, fake)
    with triggers_lifted():
        raw("INSERT INTO audit_auditevent (sequence, time, actor_name, api_key_prefix, action, resource, status, "
            "user_agent, request_id, metadata, prev_hash, hash, version) "
            "VALUES (%s, %s, %s, '', %s, '', %s, '', '', %s, %s, %s, %s)",
            [4, fake.time, "mallory", fake.action, "success", "{}", fake.prev_hash, fake.hash, fake.version])
    message = verify_fails()
    assert "#4" in message and "inserted" in message


def test_an_event_is_written_only_if_the_callers_transaction_commits():
    with pytest.raises(RuntimeError), transaction.atomic():
        record(actions.DOCUMENT_DELETED, resource="document:1")
        raise RuntimeError("the action failed")
    assert not AuditEvent.objects.exists()
    record(actions.DOCUMENT_DELETED, resource="document:1")
    assert AuditEvent.objects.get().sequence == 1


def test_prune_leaves_a_signed_checkpoint_and_the_rest_still_verifies():
    old = chain_of(4)
    cutoff = timezone.now() + dt.timedelta(microseconds=1)
    record(actions.AGENT_RUN, resource="kept")
    call_command("prune_audit", before=cutoff.isoformat())
    checkpoint = AuditCheckpoint.objects.get()
    assert (checkpoint.last_sequence, checkpoint.last_hash, checkpoint.pruned_count) == (4, old[-1].hash, 4)
    assert list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True)) == [5, 6]  # 6: pruned
    assert verify().startswith("2 events verified")
    # Ordinary deletes are still refused after pruning.
    with pytest.raises(DatabaseError), transaction.atomic():
        raw("DELETE FROM audit_auditevent")


def test_prune_everything_then_append_continues_from_the_checkpoint():
    chain_of(2)
    call_command("prune_audit", before=(timezone.now() + dt.timedelta(seconds=1)).isoformat())
    assert list(AuditEvent.objects.values_list("sequence", flat=True)) == [3]  # the audit.pruned event
    assert AuditEvent.objects.get().action == actions.AUDIT_PRUNED
    assert "1 events verified" in verify()


def test_a_forged_checkpoint_is_caught():
    chain_of(3)
    call_command("prune_audit", before=(timezone.now() + dt.timedelta(seconds=1)).isoformat())
    if connection.vendor == "postgresql":  # the database refuses on its own
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            raw("UPDATE audit_auditcheckpoint SET pruned_count = 1")
    with triggers_lifted():
        raw("UPDATE audit_auditcheckpoint SET pruned_count = 1")
    assert "signature" in verify_fails()


def test_prune_refuses_a_broken_chain():
    chain_of(3)
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET action = 'x' WHERE sequence = 1")
    with pytest.raises(CommandError, match="nothing was pruned"):
        call_command("prune_audit", before=(timezone.now() + dt.timedelta(seconds=1)).isoformat())
    assert AuditEvent.objects.count() == 3


def test_prune_with_nothing_old_enough(capsys):
    chain_of(1)
    call_command("prune_audit", before="2000-01-01")
    assert "nothing pruned" in capsys.readouterr().out
    with pytest.raises(CommandError):
        call_command("prune_audit", before="not a date")
