"""GET /api/v1/audit/events and /api/v1/audit/export: scoped, filtered, bad input refused clearly."""

import datetime as dt
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit import actions
from audit.models import AuditEvent
from audit.services import record
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db


def listed(client, **params):
    response = client.get(reverse("audit-events"), params)
    assert response.status_code == 200, response.content
    return response.json()


def test_admins_never_see_another_organizations_events(users, other_users, client_for):
    record(actions.DOCUMENT_UPLOADED, actor=users["user"], resource="document:1")
    record(actions.DOCUMENT_UPLOADED, actor=other_users["user"], resource="document:2")
    record(actions.AUTH_FAILED, status="denied")  # anonymous: no organization
    for admin, mine in ((users["admin"], users["admin"].organization_id),
                        (other_users["admin"], other_users["admin"].organization_id)):
        body = listed(client_for(admin), page_size=500)
        assert body["results"] and {e["organization_id"] for e in body["results"]} == {mine}
        assert AuditEvent.objects.exclude(organization_id=mine).exists()
    root = User.objects.create_superuser("root", "root@example.com", "x" * 20)
    everything = listed(client_for(root), page_size=500)["results"]
    assert {None, users["admin"].organization_id, other_users["admin"].organization_id} <= {
        e["organization_id"] for e in everything}


def test_filters_and_cursor_pagination_newest_first(users, client_for):
    for i in range(7):
        record(actions.AGENT_RUN, actor=users["user"], resource=f"conversation:{i}")
    record(actions.PERMISSION_DENIED, status="denied", actor=users["viewer"], resource="user-list")
    client = client_for(users["admin"])
    page = listed(client, action=actions.AGENT_RUN, actor="user", page_size=3)
    sequences = [e["sequence"] for e in page["results"]]
    assert len(sequences) == 3 and sequences == sorted(sequences, reverse=True)
    rest = client.get(page["next"]).json()
    assert rest["results"][0]["sequence"] < sequences[-1]
    denied = listed(client, status="denied", resource="user-list")["results"]
    assert [(e["actor_name"], e["action"]) for e in denied] == [("viewer", actions.PERMISSION_DENIED)]
    now = timezone.now()
    window = listed(client, since=(now - dt.timedelta(minutes=5)).isoformat(), until=now.isoformat())
    assert window["results"]
    assert listed(client, since=(now + dt.timedelta(minutes=5)).isoformat())["results"] == []


@pytest.mark.parametrize("params, field", [
    ({"since": "yesterday"}, "since"),
    ({"until": "2024-13-45T00:00:00Z"}, "until"),
    ({"status": "maybe"}, "status"),
    ({"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T00:00:00Z"}, "until"),
    ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "since"),
    ({"actor": "x" * 151}, "actor"),
    ({"sequence__gt": "1"}, "sequence__gt"),
])
def test_bad_filters_are_a_clear_400(users, client_for, params, field):
    for route in ("audit-events", "audit-export"):
        error = assert_envelope(client_for(users["admin"]).get(reverse(route), params), 400, "invalid")
        assert field in error["fields"], error


def test_bad_filters_from_a_non_admin_are_a_recorded_denial(users, client_for):
    response = client_for(users["viewer"]).get(reverse("audit-events"), {"since": "garbage"})
    assert_envelope(response, 403, "permission_denied")
    event = AuditEvent.objects.get(request_id=response["X-Request-ID"])
    assert (event.status, event.actor_id) == ("denied", users["viewer"].pk)


def test_export_streams_the_organizations_jsonl_and_is_itself_recorded(users, other_users, client_for):
    record(actions.DOCUMENT_SHARED, actor=users["user"], resource="document:1")
    record(actions.DOCUMENT_SHARED, actor=other_users["user"], resource="document:2")
    response = client_for(users["admin"]).get(reverse("audit-export"), {"action": actions.DOCUMENT_SHARED})
    assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert [(e["resource"], e["organization_id"]) for e in lines] == [("document:1", users["admin"].organization_id)]
    exported = AuditEvent.objects.get(action=actions.DATA_EXPORTED)
    assert exported.actor_id == users["admin"].pk and exported.request_id == response["X-Request-ID"]
    assert exported.metadata["action"] == actions.DOCUMENT_SHARED


def test_export_needs_export_data(users, client_for):
    for role in ("user", "viewer", "api_user"):
        assert_envelope(client_for(users[role]).get(reverse("audit-export")), 403, "permission_denied")
    assert not AuditEvent.objects.filter(action=actions.DATA_EXPORTED).exists()
