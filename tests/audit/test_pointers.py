"""The pointers kept outside the hash (organization_id, actor_id) cannot move an event to another
organization or person: the trail is read by the hashed references, and verify_audit names an
event whose pointer no longer matches its reference."""

import json

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.actions.users import create_user
from audit import actions
from audit.services import record
from tests.audit.conftest import raw, triggers_lifted


def move(event, pointer: str, target) -> None:
    """What an attacker with database access does: repoint the event, leave everything hashed alone."""
    with triggers_lifted():
        raw(f"UPDATE audit_auditevent SET {pointer}_id = %s WHERE id = %s", [target, event.pk])  # noqa: S608


@pytest.mark.parametrize("pointer", ["organization", "actor"])
def test_verify_audit_in_another_process_names_the_event_whose_pointer_was_moved(manage_py, users, other_users,
                                                                                  pointer):
    record(actions.AGENT_RUN, actor=users["user"], resource="conversation:1")
    event = record(actions.DOCUMENT_DELETED, actor=users["user"], resource="document:7")
    record(actions.AGENT_RUN, actor=users["user"], resource="conversation:2")
    untouched = manage_py("verify_audit")
    assert untouched.returncode == 0, untouched.stderr
    move(event, pointer, other_users["user"].organization_id if pointer == "organization" else other_users["user"].pk)
    result = manage_py("verify_audit")
    assert result.returncode != 0, result.stdout
    assert f"#{event.sequence} (id {event.pk})" in result.stderr and pointer in result.stderr, result.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("pointer", ["organization", "actor"])
def test_a_pointer_given_to_an_event_recorded_without_one_is_caught(users, pointer):
    event = record(actions.AUTH_FAILED, status="denied")  # anonymous: no actor, no organization
    assert (event.actor_ref, event.organization_ref) == (None, None)
    move(event, pointer, users["admin"].organization_id if pointer == "organization" else users["admin"].pk)
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit")
    assert f"#{event.sequence} (id {event.pk})" in str(failure.value) and pointer in str(failure.value)


def _sequences(client, resource: str) -> list[int]:
    response = client.get(reverse("audit-events"), {"resource": resource})
    assert response.status_code == 200, response.content
    return [e["sequence"] for e in response.json()["results"]]


def _exported(client, resource: str) -> list[int]:
    response = client.get(reverse("audit-export"), {"resource": resource})
    assert response.status_code == 200, response.content
    return [json.loads(line)["sequence"] for line in b"".join(response.streaming_content).decode().splitlines()]


@pytest.mark.django_db
def test_an_event_moved_to_another_organization_stays_with_the_one_recorded(users, other_users, client_for):
    event = record(actions.DOCUMENT_DELETED, actor=users["user"], resource="document:7")
    move(event, "organization", other_users["admin"].organization_id)
    intruder, owner = client_for(other_users["admin"]), client_for(users["admin"])
    assert _sequences(intruder, "document:7") == [] and _exported(intruder, "document:7") == []
    assert _sequences(owner, "document:7") == [event.sequence] and _exported(owner, "document:7") == [event.sequence]


@pytest.mark.django_db
def test_the_admin_filters_and_searches_by_what_was_recorded(client, users, other_users):
    root = create_user("root", organization=users["admin"].organization, role="admin",
                       password="correct horse battery staple")
    root.is_staff = root.is_superuser = True
    root.save(update_fields=["is_staff", "is_superuser"])
    client.force_login(root)
    event = record(actions.DOCUMENT_DELETED, actor=users["user"], resource="document:7")
    move(event, "organization", other_users["admin"].organization_id)
    move(event, "actor", other_users["user"].pk)

    def listed(**params) -> bool:
        response = client.get(reverse("admin:audit_auditevent_changelist"), params)
        assert response.status_code == 200, response.status_code
        return event.pk in {e.pk for e in response.context["cl"].result_list}

    assert not listed(organization__id__exact=other_users["admin"].organization_id)
    assert listed(organization__id__exact=users["admin"].organization_id)
    assert not listed(q=other_users["user"].username)
    assert listed(q=users["user"].username)
