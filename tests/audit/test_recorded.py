"""What is recorded, by whom, from where, under which request id."""

import uuid

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from accounts.actions.keys import create_api_key
from accounts.actions.teams import create_team
from accounts.actions.users import set_role
from accounts.models import Team
from audit import actions
from audit.models import AuditEvent
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-sequence").first()


def test_request_id_is_honoured_when_well_formed_and_replaced_when_forged(users, client_for):
    client = client_for(users["user"])
    given = str(uuid.uuid4())
    assert client.get(reverse("me"), HTTP_X_REQUEST_ID=given.upper())["X-Request-ID"] == given
    for forged in ["not-a-uuid", "x" * 10_000, given + "\n<script>", ""]:
        echoed = client.get(reverse("me"), HTTP_X_REQUEST_ID=forged)["X-Request-ID"]
        assert echoed != forged and str(uuid.UUID(echoed)) == echoed
    assert str(uuid.UUID(client.get("/no/such/page")["X-Request-ID"]))  # on every response


def test_forwarded_for_is_trusted_only_through_the_configured_proxies(api_client, settings):
    forged = {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7", "REMOTE_ADDR": "10.0.0.2"}
    settings.RELAY_TRUSTED_PROXY_COUNT = 0
    api_client.get(reverse("me"), **forged)
    assert last(actions.AUTH_FAILED).ip == "10.0.0.2"
    settings.RELAY_TRUSTED_PROXY_COUNT = 1  # nginx appended the last entry; the rest is the client's word
    api_client.get(reverse("me"), HTTP_USER_AGENT="curl/8", **forged)
    event = last(actions.AUTH_FAILED)
    assert (event.ip, event.user_agent) == ("203.0.113.7", "curl/8")
    api_client.get(reverse("me"), HTTP_X_FORWARDED_FOR="not an address", REMOTE_ADDR="10.0.0.2")
    assert last(actions.AUTH_FAILED).ip == "10.0.0.2"


def test_console_login_success_failure_and_logout(users, client):
    assert client.post(reverse("login"), {"username": "user", "password": "wrong"}).status_code == 200
    failed = last(actions.LOGIN_FAILED)
    assert failed.status == "denied" and failed.metadata["username"] == "user" and failed.actor_id is None
    assert "wrong" not in str(failed.metadata)
    response = client.post(reverse("login"), {"username": "user", "password": PASSWORD})
    assert response.status_code == 302
    ok = last(actions.LOGIN_SUCCEEDED)
    assert ok.actor_id == users["user"].pk and ok.organization_id == users["user"].organization_id
    assert ok.request_id == response["X-Request-ID"]
    client.post(reverse("logout"))
    assert last(actions.LOGOUT).actor_id == users["user"].pk


def test_jwt_issue_and_refresh_failure(users, api_client):
    response = api_client.post(reverse("token-obtain"), {"username": "viewer", "password": PASSWORD}, format="json")
    issued = last(actions.TOKEN_ISSUED)
    assert issued.actor_id == users["viewer"].pk and issued.request_id == response["X-Request-ID"]
    before = AuditEvent.objects.count()
    bad = api_client.post(reverse("token-obtain"), {"username": "viewer", "password": "nope"}, format="json")
    assert_envelope(bad, 401)
    assert AuditEvent.objects.count() == before + 1  # the failed login, not a second "auth.failed"
    assert last(actions.LOGIN_FAILED).request_id == bad["X-Request-ID"]
    refused = api_client.post(reverse("token-refresh"), {"refresh": "garbage"}, format="json")
    assert_envelope(refused, 401)
    event = last(actions.TOKEN_REFRESH_FAILED)
    assert event.status == "denied" and event.request_id == refused["X-Request-ID"]
    refreshed = api_client.post(reverse("token-refresh"), {"refresh": response.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200 and last(actions.TOKEN_REFRESHED).actor_id == users["viewer"].pk


def test_api_key_lifecycle_and_use_after_revoke(users, client_for, api_client):
    owner = users["api_user"]
    client = client_for(owner)
    created = client.post(reverse("apikey-list"), {"name": "ci"}, format="json").json()
    event = last(actions.API_KEY_CREATED)
    assert (event.actor_id, event.resource) == (owner.pk, f"api_key:{created['id']}")
    assert created["key"] not in str(event.metadata)  # never the secret
    rotated = client.post(reverse("apikey-rotate", args=[created["id"]])).json()
    new_prefix = rotated["key"].split("_")[1]
    assert last(actions.API_KEY_ROTATED).metadata["old_prefix"] == created["key"].split("_")[1]
    client.post(reverse("apikey-revoke", args=[created["id"]]))
    assert last(actions.API_KEY_REVOKED).actor_id == owner.pk
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {rotated['key']}")
    refused = api_client.get(reverse("me"))
    assert_envelope(refused, 401)
    denied = AuditEvent.objects.filter(request_id=refused["X-Request-ID"])
    assert [e.action for e in denied] == [actions.API_KEY_USED_AFTER_REVOKE]
    assert denied[0].actor_id == owner.pk and denied[0].api_key_prefix == new_prefix


def test_requests_through_a_key_carry_its_prefix(users, api_client):
    issued = create_api_key(users["user"], "bot")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    response = api_client.get(reverse("user-list"))
    event = AuditEvent.objects.get(request_id=response["X-Request-ID"])
    assert (event.action, event.actor_id, event.api_key_prefix) == (actions.PERMISSION_DENIED, users["user"].pk,
                                                                    issued.key.prefix)


def test_user_and_role_changes(users, client_for):
    admin = client_for(users["admin"])
    created = admin.post(reverse("user-list"), {"username": "newbie", "role": "viewer", "email": "n@example.com",
                                                "password": "a much longer passphrase"}, format="json").json()
    event = last(actions.USER_CREATED)
    assert (event.actor_id, event.resource, event.metadata["role"]) == (users["admin"].pk, f"user:{created['id']}",
                                                                       "viewer")
    admin.patch(reverse("user-detail", args=[created["id"]]), {"role": "user", "email": "m@example.com"},
                format="json")
    role = last(actions.ROLE_CHANGED)
    assert (role.actor_id, role.metadata["from"], role.metadata["to"]) == (users["admin"].pk, "viewer", "user")
    assert last(actions.USER_UPDATED).metadata["changes"]["email"] == ["n@example.com", "m@example.com"]
    set_role(users["viewer"], "user")  # a shell or command: no actor, still recorded
    assert last(actions.ROLE_CHANGED).actor_id is None
    create_team(users["admin"].organization, "Ops")
    assert last(actions.TEAM_CREATED).metadata == {"name": "Ops"}


def test_admin_actions_are_recorded(users):
    admin = users["admin"]
    kind = ContentType.objects.get_for_model(Team)
    team = Team.objects.get(name="Research")
    LogEntry.objects.log_actions(admin.pk, [team], CHANGE, "Changed name.", single_object=True)
    event = last(actions.ADMIN_ACTION)
    assert (event.actor_id, event.resource, event.metadata["operation"]) == (admin.pk, f"accounts.team:{team.pk}",
                                                                            "change")
    teams = [Team.objects.create(organization=admin.organization, name=f"T{i}") for i in range(3)]
    LogEntry.objects.log_actions(admin.pk, teams, DELETION)  # bulk: delete_selected
    event = last(actions.ADMIN_ACTION)
    assert event.metadata["count"] == 3 and event.metadata["object_ids"] == [str(t.pk) for t in teams]
    assert kind.model == "team"


def test_admin_pages_show_events_read_only(users, client):
    from accounts.models import User

    root = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    client.force_login(root)
    event = AuditEvent.objects.order_by("-sequence").first()
    listing = client.get("/admin/audit/auditevent/?q=viewer&status__exact=success")
    assert listing.status_code == 200
    page = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
