"""The hash format is versioned: events written before the version existed verify under format 1
forever, new events use the current format, and an event's version cannot be changed."""

import datetime as dt
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from audit import actions
from audit.chain import FORMAT_VERSION, GENESIS, canonical, compute_hash
from audit.models import AuditEvent
from audit.services import appending_together, record
from tests.audit.conftest import raw, triggers_lifted

BEFORE_VERSIONS = ("audit", "0002_append_only_triggers")


def sample(**fields):
    return SimpleNamespace(**{
        "sequence": 1, "time": dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), "actor_ref": 7,
        "actor_name": "alice", "api_key_prefix": "abc123", "organization_ref": 3, "action": "api_key.created",
        "resource": "api_key:9", "status": "success", "ip": "10.0.0.1", "user_agent": "curl/8",
        "request_id": "req-1", "metadata": {"b": [1, 2.5], "a": "x"}, **fields})


def test_format_1_hashes_exactly_as_before_versions_existed():
    # Computed by the code before the format version was introduced: format 1 must never change.
    golden = "a2d7740e74cd13542548a975eff55a1b265049245fda1d526144feaed1eaed9d"
    assert compute_hash(GENESIS, sample()) == golden  # a row without a version is format 1
    assert compute_hash(GENESIS, sample(version=1)) == golden
    assert compute_hash(GENESIS, sample(version=2)) != golden and b'"version":2' in canonical(sample(version=2))


@pytest.mark.django_db
def test_new_events_use_the_current_format_one_by_one_and_in_group_commits():
    record(actions.AGENT_RUN)
    with transaction.atomic(), appending_together():
        record(actions.AGENT_RUN, resource="conversation:1")
        record(actions.AGENT_RUN, resource="conversation:2")
    assert FORMAT_VERSION == 2 and list(AuditEvent.objects.values_list("version", flat=True)) == [2, 2, 2]
    call_command("verify_audit")


def _insert_old_rows(count: int) -> None:
    """Rows as the code before versions wrote them (format 1, no version column yet)."""
    prev = GENESIS
    for sequence in range(1, count + 1):
        event = sample(sequence=sequence, resource=f"api_key:{sequence}", actor_ref=None, organization_ref=None)
        event.hash = compute_hash(prev, event)
        raw("INSERT INTO audit_auditevent (sequence, time, actor_name, api_key_prefix, action, resource, status, ip, "
            "user_agent, request_id, metadata, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s)", [sequence, event.time, event.actor_name, event.api_key_prefix, event.action, event.resource,
                        event.status, event.ip, event.user_agent, event.request_id, '{"b": [1, 2.5], "a": "x"}',
                        prev, event.hash])
        prev = event.hash


@pytest.mark.slow
def test_events_written_before_the_migration_still_verify_after_it(manage_py):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("audit")
    executor.migrate([BEFORE_VERSIONS])
    try:
        _insert_old_rows(3)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    assert list(AuditEvent.objects.order_by("sequence").values_list("version", flat=True)) == [1, 1, 1]
    record(actions.AGENT_RUN, resource="after the migration")
    assert list(AuditEvent.objects.order_by("sequence").values_list("version", flat=True)) == [1, 1, 1, 2]
    result = manage_py("verify_audit")
    assert result.returncode == 0 and result.stdout.startswith("4 events verified"), result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("version, said", [(1, "no longer matches its hash"), (7, "unknown hash format version 7")])
def test_a_changed_version_is_caught(version, said):
    record(actions.AGENT_RUN)
    event = record(actions.AGENT_RUN)
    with triggers_lifted():
        raw("UPDATE audit_auditevent SET version = %s WHERE id = %s", [version, event.pk])
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit")
    assert f"#{event.sequence} (id {event.pk}) was altered" in str(failure.value) and said in str(failure.value)


@pytest.mark.django_db
def test_the_database_refuses_to_change_a_version():
    event = record(actions.AGENT_RUN)
    with pytest.raises(DatabaseError), transaction.atomic():
        raw("UPDATE audit_auditevent SET version = 1 WHERE id = %s", [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).version == FORMAT_VERSION
