import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from accounts.models import Team, User
from accounts.roles import ROLE_PERMISSIONS
from tests.conftest import assert_envelope

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery staple"


def test_roles_in_the_database_match_the_matrix():
    for role, codenames in ROLE_PERMISSIONS.items():
        held = set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))
        assert held == set(codenames), role
    assert Permission.objects.filter(content_type__app_label="accounts", codename__in=ROLE_PERMISSIONS["admin"]).count() == 10


def test_me_reports_role_and_effective_permissions(users, client_for):
    body = client_for(users["viewer"]).get(reverse("me")).json()
    assert body["role"] == "viewer" and body["organization"]["name"] == "Acme"
    assert body["permissions"] == ["use_rag_agent", "view_metrics"]
    assert body["user"]["username"] == "viewer" and body["auth"] == {"method": "user"}


def test_jwt_issue_refresh_rotation_and_blacklist(users, api_client):
    tokens = api_client.post(reverse("token-obtain"), {"username": "user", "password": PASSWORD}, format="json").json()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert api_client.get(reverse("me")).json()["user"]["username"] == "user"

    api_client.credentials()
    rotated = api_client.post(reverse("token-refresh"), {"refresh": tokens["refresh"]}, format="json")
    assert rotated.status_code == 200 and rotated.json()["refresh"] != tokens["refresh"]
    reused = api_client.post(reverse("token-refresh"), {"refresh": tokens["refresh"]}, format="json")
    assert_envelope(reused, 401)


def test_wrong_password_and_bad_bodies_on_the_token_endpoint(users, api_client):
    assert_envelope(api_client.post(reverse("token-obtain"), {"username": "user", "password": "nope"},
                                    format="json"), 401)
    assert_envelope(api_client.post(reverse("token-obtain"), "not json", content_type="application/json"), 400,
                    "malformed_request")
    assert_envelope(api_client.post(reverse("token-obtain"), {}, format="json"), 400, "invalid")


def test_token_endpoint_is_throttled(users, api_client, settings):
    statuses = [api_client.post(reverse("token-obtain"), {"username": "user", "password": "guess"},
                                format="json").status_code for _ in range(11)]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429


def test_jwt_of_a_deactivated_user_is_refused(users, api_client):
    tokens = api_client.post(reverse("token-obtain"), {"username": "user", "password": PASSWORD}, format="json").json()
    User.objects.filter(username="user").update(is_active=False)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert_envelope(api_client.get(reverse("me")), 401)


def test_admin_creates_and_changes_users_in_their_organization(users, client_for):
    admin = client_for(users["admin"])
    team = Team.objects.create(organization=users["admin"].organization, name="Sales")
    created = admin.post(reverse("user-list"), {"username": "newbie", "email": "n@example.com", "role": "viewer",
                                                "team": team.pk, "password": "a much longer passphrase"},
                         format="json")
    assert created.status_code == 201, created.content
    assert created.json()["role"] == "viewer" and created.json()["organization"] == users["admin"].organization_id
    newbie = created.json()["id"]
    changed = admin.patch(reverse("user-detail", args=[newbie]), {"role": "user"}, format="json")
    assert changed.json()["role"] == "user"
    assert admin.delete(reverse("user-detail", args=[newbie])).status_code == 204
    assert User.objects.get(pk=newbie).is_active is False


def test_user_changes_refused_with_field_errors(users, client_for, other_org):
    admin = client_for(users["admin"])
    count = User.objects.count()
    cases = [
        ({"username": "x", "role": "wizard"}, "role"),
        ({"username": "user", "role": "user"}, "username"),
        ({"username": "x", "role": "user", "organization": other_org.pk}, "organization"),
        ({"username": "x", "role": "user", "is_superuser": True}, "is_superuser"),
        ({"username": "x y", "role": "user"}, "username"),
        ({"username": "x", "role": ["user"]}, "role"),
        ({"username": "x", "role": "user", "password": "123"}, "password"),
    ]
    for body, field in cases:
        error = assert_envelope(admin.post(reverse("user-list"), body, format="json"), 400, "invalid")
        assert field in error["fields"] or field in error["message"], (body, error)
    assert User.objects.count() == count
    own = reverse("user-detail", args=[users["admin"].pk])
    assert_envelope(admin.patch(own, {"role": "viewer"}, format="json"), 403, "permission_denied")
    assert_envelope(admin.delete(own), 403, "permission_denied")


def test_nothing_crosses_organizations(users, other_users, client_for):
    admin = client_for(users["admin"])
    listed = {u["username"] for u in admin.get(reverse("user-list")).json()["results"]}
    assert listed == set(users) and not listed & {u.username for u in other_users.values()}
    stranger = other_users["user"]
    assert_envelope(admin.get(reverse("user-detail", args=[stranger.pk])), 404, "not_found")
    assert_envelope(admin.patch(reverse("user-detail", args=[stranger.pk]), {"role": "admin"}, format="json"), 404)
    assert_envelope(admin.delete(reverse("user-detail", args=[stranger.pk])), 404)
    stranger.refresh_from_db()
    assert stranger.is_active and stranger.role == "user"
    their_team = other_users["user"].team
    assert_envelope(admin.get(reverse("team-detail", args=[their_team.pk])), 404)
    assert_envelope(admin.patch(reverse("user-detail", args=[users["user"].pk]), {"team": their_team.pk},
                                format="json"), 400, "invalid")


def test_huge_and_non_json_bodies(users, client_for):
    client = client_for(users["admin"])
    huge = b'{"name": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    assert_envelope(client.post(reverse("apikey-list"), huge, content_type="application/json"), 413,
                    "payload_too_large")
    assert_envelope(client.post(reverse("apikey-list"), b"<xml/>", content_type="application/xml"), 415,
                    "unsupported_media_type")
    assert_envelope(client.post(reverse("apikey-list"), b"{bad json", content_type="application/json"), 400,
                    "malformed_request")
    assert_envelope(client.post(reverse("apikey-list"), b"[1, 2]", content_type="application/json"), 400, "invalid")
    assert_envelope(client.get("/api/v1/nope"), 404, "not_found")
    assert_envelope(client.put(reverse("me"), {}, format="json"), 405, "method_not_allowed")


def test_session_login_page_and_throttling(client, users):
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "user", "password": PASSWORD})
    assert response.status_code == 302
    client.logout()
    for _ in range(10):
        assert client.post("/login/", {"username": "user", "password": "wrong"}).status_code == 200
    blocked = client.post("/login/", {"username": "user", "password": PASSWORD})
    assert blocked.status_code == 429 and "Too many" in blocked.content.decode()
