"""Privilege escalation, for every role: each attempt is refused AND audited as `denied`.

Each test names, in a comment, the control it exercises; removing that control makes the test
fail (either the attempt succeeds, or it is refused without a `denied` audit event).
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.actions.keys import create_api_key, rotate_api_key
from accounts.actions.users import update_user
from accounts.models import APIKey, User
from accounts.roles import ROLES
from agents.actions.documents import upload_document
from agents.models import Conversation, Document
from audit.models import AuditEvent
from billing.models import Budget
from tests.conftest import assert_envelope

VIA = ["session", "api_key"]


class Denials:
    """Counts `denied` audit events so a test can say "exactly this refusal was recorded"."""

    def __init__(self):
        self.seen = self._last()

    @staticmethod
    def _last():
        return AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0

    def new(self, action=None):
        events = AuditEvent.objects.filter(sequence__gt=self.seen, status="denied")
        if action:
            events = events.filter(action=action)
        self.seen = self._last()
        return list(events)


def refused(response, status, code=None, *, denials, actor=None, action=None):
    """The response is the refusal and exactly one `denied` event records it (for actor)."""
    if not response.get("Content-Type", "").startswith("application/json"):  # a redirect, or an HTML page
        assert response.status_code == status, response.status_code
    else:
        assert_envelope(response, status, code)
    events = denials.new(action)
    assert len(events) == 1, [(e.action, e.resource) for e in events]
    if actor is not None:
        assert events[0].actor_ref == actor.pk
    return events[0]


@pytest.fixture
def denials(db):
    return Denials()


def conversation_of(user):
    return Conversation.objects.create(organization_id=user.organization_id, user=user, agent="math", title="secret")


def document_of(user):
    return upload_document(user, name="private.txt", data=b"The launch code is 0000.", content_type="text/plain")


# --- API keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("role", ROLES)
def test_no_role_can_create_or_rotate_a_key_for_another_user(role, via, users, client_for, denials):
    # Control: APIKeyCreateSerializer is strict (no owner field) + audit.refusals privileged-field audit;
    # rotate/revoke go through APIKeyViewSet.get_queryset (owner=caller) + audit.refusals hidden-object audit.
    me, victim = users[role], users["admin" if role != "admin" else "user"]
    client, theirs = client_for(me, via), create_api_key(victim, "theirs").key
    denials.seen = Denials._last()
    before = APIKey.objects.filter(owner=victim).count()
    refused(client.post(reverse("apikey-list"), {"name": "x", "owner": victim.pk}, format="json"), 400,
            "invalid", denials=denials, actor=me, action="permission.privileged_field")
    assert APIKey.objects.filter(owner=victim).count() == before
    refused(client.post(reverse("apikey-rotate", args=[theirs.pk])), 404, "not_found", denials=denials, actor=me,
            action="permission.hidden_object")
    refused(client.post(reverse("apikey-revoke", args=[theirs.pk])), 404, "not_found", denials=denials, actor=me)
    theirs.refresh_from_db()
    assert theirs.is_active and APIKey.objects.get(pk=theirs.pk).prefix == theirs.prefix


@pytest.mark.parametrize("role", ["user", "viewer", "api_user"])
def test_a_key_cannot_get_a_scope_or_agent_its_owner_lacks(role, users, client_for, denials):
    # Control: accounts.services.validate_key_grants (PrivilegeRefused -> 403 + permission.denied).
    me = users[role]
    client = client_for(me)
    lacking_agent = {"user": [], "viewer": [["math"], ["code", "rag"]], "api_user": [["vision"]]}[role]
    bodies = [{"name": "x", "scopes": ["manage_users"]}, {"name": "x", "scopes": ["export_data", "use_rag_agent"]}]
    bodies += [{"name": "x", "allowed_agents": agents} for agents in lacking_agent]
    for body in bodies:
        refused(client.post(reverse("apikey-list"), body, format="json"), 403, "permission_denied",
                denials=denials, actor=me, action="permission.denied")
    assert not APIKey.objects.filter(owner=me).exists()


def test_a_key_cannot_mint_a_key_wider_than_itself(users, api_client, denials):
    # Control: accounts.services.narrow_to_parent (agents, models, addresses, expiry inherited, never widened).
    admin = users["admin"]
    parent = create_api_key(admin, "narrow", scopes=["use_math_agent"], allowed_agents=["math"],
                            allowed_models=["local-mini"], allowed_ips=["127.0.0.0/8"],
                            expires_at=timezone.now() + timedelta(days=1))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {parent.secret}")
    denials.seen = Denials._last()
    for body in ({"name": "x", "scopes": ["use_code_agent"]}, {"name": "x", "allowed_agents": ["code"]},
                 {"name": "x", "allowed_models": ["local-large"]}, {"name": "x", "allowed_ips": ["0.0.0.0/0"]},
                 {"name": "x", "expires_days": 30}):
        refused(api_client.post(reverse("apikey-list"), body, format="json"), 403, "permission_denied",
                denials=denials, actor=admin)
    child = api_client.post(reverse("apikey-list"), {"name": "child"}, format="json")
    assert child.status_code == 201, child.content
    made = APIKey.objects.get(pk=child.json()["id"])
    assert made.scopes == ["use_math_agent"] and made.allowed_agents == ["math"]
    assert made.allowed_models == ["local-mini"] and made.allowed_ips == ["127.0.0.0/8"]
    assert made.expires_at == parent.key.expires_at


@pytest.mark.parametrize("role", ROLES)
def test_a_key_cannot_be_moved_to_another_user_or_organization(role, users, other_users, client_for, denials):
    # Control: APIKeyViewSet offers no update (405) + audit.refusals privileged-field audit on 405.
    me = users[role]
    client = client_for(me)
    mine = create_api_key(me, "mine").key
    denials.seen = Denials._last()
    detail = reverse("apikey-detail", args=[mine.pk])
    for body in ({"owner": users["admin"].pk}, {"owner": other_users["admin"].pk},
                 {"organization": other_users["admin"].organization_id}):
        for method in (client.patch, client.put):
            refused(method(detail, body, format="json"), 405, "method_not_allowed", denials=denials, actor=me,
                    action="permission.privileged_field")
    mine.refresh_from_db()
    assert mine.owner_id == me.pk


# --- one's own role, team, organization -------------------------------------------------------

@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("role", ["user", "viewer", "api_user"])
def test_non_admins_cannot_change_their_own_role_team_or_organization(role, via, users, other_users, client_for,
                                                                      denials):
    # Control: UserViewSet.required_permission = manage_users (RequiresPermission -> 403, audited).
    me = users[role]
    client = client_for(me, via)
    own = reverse("user-detail", args=[me.pk])
    for body in ({"role": "admin"}, {"team": None}, {"organization": other_users["admin"].organization_id}):
        refused(client.patch(own, body, format="json"), 403, "permission_denied", denials=denials, actor=me)
    me.refresh_from_db()
    assert me.groups.filter(name=role).exists() and me.team is not None and me.organization_id == users["admin"].organization_id


def test_an_admin_cannot_change_their_own_role_team_or_organization(users, other_users, client_for, denials):
    # Controls: accounts.actions.users.update_user refuses self-changes (PrivilegeRefused -> 403); the
    # organization is not a writable field (strict serializer + audit.refusals).
    admin = users["admin"]
    client = client_for(admin)
    own = reverse("user-detail", args=[admin.pk])
    refused(client.patch(own, {"role": "viewer"}, format="json"), 403, "permission_denied", denials=denials)
    refused(client.patch(own, {"team": None}, format="json"), 403, "permission_denied", denials=denials)
    refused(client.patch(own, {"organization": other_users["admin"].organization_id}, format="json"), 400, "invalid",
            denials=denials, action="permission.privileged_field")
    refused(client.post(reverse("user-list"), {"username": "mole", "role": "admin",
                                               "organization": other_users["admin"].organization_id}, format="json"),
            400, "invalid", denials=denials, action="permission.privileged_field")
    admin.refresh_from_db()
    assert admin.groups.filter(name="admin").exists() and admin.team is not None
    assert not User.objects.filter(username="mole").exists()


def test_an_admin_cannot_reach_users_of_another_organization(users, other_users, client_for, denials):
    # Control: UserViewSet.get_queryset (organization_scope) + hidden-object audit.
    client = client_for(users["admin"])
    stranger = other_users["user"]
    refused(client.patch(reverse("user-detail", args=[stranger.pk]), {"role": "admin"}, format="json"), 404,
            denials=denials, action="permission.hidden_object")
    refused(client.delete(reverse("user-detail", args=[stranger.pk])), 404, denials=denials)
    stranger.refresh_from_db()
    assert stranger.is_active and stranger.groups.filter(name="user").exists()


# --- other users' data ------------------------------------------------------------------------

@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_or_deletes_another_users_conversations(role, via, users, other_users, client_for, denials):
    # Control: ConversationViewSet.get_queryset (user=caller) + hidden-object audit.
    me = users[role]
    client = client_for(me, via)
    for owner in (users["user" if role != "user" else "admin"], other_users["admin"]):
        theirs = conversation_of(owner)
        denials.seen = Denials._last()
        detail = reverse("conversation-detail", args=[theirs.pk])
        refused(client.get(detail), 404, "not_found", denials=denials, actor=me, action="permission.hidden_object")
        refused(client.delete(detail), 404, "not_found", denials=denials, actor=me)
        assert str(theirs.pk) not in str(client.get(reverse("conversation-list")).content)
        assert Conversation.objects.filter(pk=theirs.pk).exists()


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("endpoint", ["query", "stream"])
def test_a_run_in_another_users_conversation_is_refused_as_a_hidden_object(endpoint, via, users, other_users,
                                                                          client_for, denials):
    # Control: agents.history.load_history's refuse_hidden (the run endpoints are no Scoped view).
    me = users["user"]
    client = client_for(me, via)
    for owner in (users["admin"], other_users["admin"]):
        theirs = conversation_of(owner)
        denials.seen = Denials._last()
        body = {"query": "1+1", "agent_type": "math", "conversation_id": str(theirs.pk)}
        event = refused(client.post(reverse(endpoint), body, format="json"), 404, "not_found", denials=denials,
                        actor=me)
        assert (event.action, event.resource) == ("permission.hidden_object", f"conversation:{theirs.pk}")
    body = {"query": "1+1", "agent_type": "math", "conversation_id": "5f0c2a4e-8d1b-4c3e-9a7f-2b6d1e0c9a84"}
    assert_envelope(client.post(reverse(endpoint), body, format="json"), 404, "not_found")
    assert denials.new() == []  # no such conversation at all: nothing was hidden


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reads_or_deletes_another_users_private_documents(role, users, other_users, client_for, denials):
    # Control: documents.visible_documents (guardian object permissions) + hidden-object audit.
    me = users[role]
    client = client_for(me)
    # Admins manage every document of their own organization (docs/design.md section 4), never another's.
    owners = [other_users["admin"]] if role == "admin" else [users["user" if role != "user" else "viewer"],
                                                              other_users["admin"]]
    for owner in owners:
        theirs = document_of(owner)
        denials.seen = Denials._last()
        detail = reverse("document-detail", args=[theirs.pk])
        refused(client.get(detail), 404, "not_found", denials=denials, actor=me)
        # Without delete_documents the permission check answers first (403); with it, the object is hidden (404).
        status = 404 if role == "admin" else 403
        refused(client.delete(detail), status, denials=denials, actor=me)
        refused(client.post(reverse("document-share", args=[theirs.pk]), {"users": [me.pk]}, format="json"),
                404 if role in ("admin", "user") else 403, denials=denials, actor=me)
        assert Document.objects.filter(pk=theirs.pk).exists()


def test_a_shared_document_can_be_read_but_not_deleted_or_reshared_by_non_owners(users, client_for, denials):
    # Control: documents.may_manage (only owner or admin deletes/shares) -> 403 permission.denied.
    from agents.actions.documents import share_document

    owner, reader = users["user"], users["api_user"]
    document = document_of(owner)
    share_document(owner, document, user_ids=[reader.pk])
    reader_client = client_for(reader)
    assert reader_client.get(reverse("document-detail", args=[document.pk])).status_code == 200
    denials.seen = Denials._last()
    refused(reader_client.delete(reverse("document-detail", args=[document.pk])), 403, denials=denials, actor=reader)
    assert Document.objects.filter(pk=document.pk).exists()


@pytest.mark.parametrize("role", ["user", "api_user"])
def test_usage_of_others_needs_view_metrics_and_never_crosses_organizations(role, users, other_users, client_for,
                                                                            denials):
    # Controls: UserUsageView (own usage only without view_metrics -> 403) and its organization
    # filter (another organization's user is 404, audited by the scoping gate).
    me = users[role]
    client = client_for(me)
    refused(client.get(reverse("costs-usage", args=[users["admin"].pk])), 403, "permission_denied", denials=denials,
            actor=me)
    refused(client.get(reverse("costs-usage", args=[other_users["user"].pk])), 404, denials=denials, actor=me,
            action="permission.hidden_object")
    assert client.get(reverse("costs-usage", args=[me.pk])).status_code == 200


def test_even_an_admin_cannot_read_usage_of_another_organization(users, other_users, client_for, denials):
    client = client_for(users["admin"])
    refused(client.get(reverse("costs-usage", args=[other_users["user"].pk])), 404, denials=denials,
            action="permission.hidden_object")


@pytest.mark.parametrize("role", ["user", "api_user"])
def test_budgets_need_view_metrics_to_read_and_admin_to_set(role, users, client_for, denials):
    # Control: BudgetView.required_permission {"GET": view_metrics, "POST": ADMIN}.
    me = users[role]
    client = client_for(me)
    refused(client.get(reverse("costs-budget")), 403, denials=denials, actor=me)
    body = {"scope": "user", "target": me.pk, "period": "monthly", "limit_usd": "1000000.00", "hard": False}
    refused(client.post(reverse("costs-budget"), body, format="json"), 403, denials=denials, actor=me)
    assert not Budget.objects.exists()


def test_an_admin_cannot_set_budgets_on_another_organizations_targets(users, other_users, client_for, denials):
    # Control: billing.budget_changes.resolve_target (caller's organization only) + its denied audit.
    client = client_for(users["admin"])
    stranger = other_users["user"]
    for scope, target in (("user", stranger.pk), ("api_key", create_api_key(stranger, "k").key.pk)):
        denials.seen = Denials._last()
        body = {"scope": scope, "target": target, "period": "monthly", "limit_usd": "0.01", "hard": True}
        refused(client.post(reverse("costs-budget"), body, format="json"), 400, "invalid", denials=denials,
                action="permission.hidden_object")
    assert not Budget.objects.exists()


def test_a_budgeted_key_cannot_lift_its_own_budget_or_its_parents(users, api_client, denials):
    # Control: BudgetView.post refuses, through a key, a budget on that key or a key above it.
    # Without it an admin's all-scope key, capped by a hard budget its admin set, lifted the cap.
    from accounts.actions.keys import create_api_key as issue

    parent = issue(users["admin"], "automation")
    Budget.objects.create(organization=users["admin"].organization, scope="api_key", api_key=parent.key,
                          period="monthly", limit_usd="1", hard=True)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {parent.secret}")
    child = api_client.post(reverse("apikey-list"), {"name": "child"}, format="json").json()
    denials.seen = Denials._last()
    lift = {"period": "monthly", "limit_usd": "1000000", "hard": False, "scope": "api_key"}
    refused(api_client.post(reverse("costs-budget"), {**lift, "target": parent.key.pk}, format="json"), 403,
            "permission_denied", denials=denials)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {child['key']}")
    for target in (parent.key.pk, child["id"]):
        refused(api_client.post(reverse("costs-budget"), {**lift, "target": target}, format="json"), 403,
                "permission_denied", denials=denials)
    assert list(Budget.objects.values_list("limit_usd", "hard")) == [(1, True)]
    other = issue(users["admin"], "another").key  # a key outside its chain: its admin powers still hold
    made = api_client.post(reverse("costs-budget"), {**lift, "target": other.pk}, format="json")
    assert made.status_code == 201, made.content


# --- credentials that must no longer work ----------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_revoked_expired_and_rotated_keys_are_refused(role, users, api_client, denials):
    # Controls: accounts.services.authenticate_key (revoked_at, expires_at, rotated hash) -> 401 auth.failed.
    owner = users[role]
    revoked = create_api_key(owner, "revoked")
    from accounts.actions.keys import revoke_api_key

    revoke_api_key(revoked.key)
    expired = create_api_key(owner, "expired", expires_at=timezone.now() + timedelta(seconds=30))
    APIKey.objects.filter(pk=expired.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    rotated = create_api_key(owner, "rotated")
    rotate_api_key(rotated.key)
    denials.seen = Denials._last()
    for secret in (revoked.secret, expired.secret, rotated.secret):
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        event = refused(api_client.get(reverse("me")), 401, denials=denials)
        assert event.action in ("auth.failed", "api_key.used_after_revoke"), event.action
        assert secret not in str(event.metadata) and secret not in event.resource  # secrets never reach the trail  # the secret itself is never written to the trail


def test_a_refresh_token_cannot_be_reused_after_rotation(users, api_client, denials):
    # Control: SIMPLE_JWT ROTATE_REFRESH_TOKENS + BLACKLIST_AFTER_ROTATION.
    pair = api_client.post(reverse("token-obtain"), {"username": "user", "password": "correct horse battery staple"},
                           format="json").json()
    first = api_client.post(reverse("token-refresh"), {"refresh": pair["refresh"]}, format="json")
    assert first.status_code == 200 and first.json()["refresh"] != pair["refresh"]
    denials.seen = Denials._last()
    refused(api_client.post(reverse("token-refresh"), {"refresh": pair["refresh"]}, format="json"), 401,
            denials=denials, action="auth.token_refresh_failed")


@pytest.mark.parametrize("credential", ["jwt", "api_key", "session"])
def test_credentials_of_a_deactivated_user_stop_working_at_once(credential, users, client_for, denials):
    # Controls: simplejwt checks user.is_active per request; authenticate_key checks the owner;
    # sessions of inactive users are rejected by ModelBackend.get_user.
    victim = users["user"]
    client = client_for(victim, credential)
    assert client.get(reverse("me")).status_code == 200
    update_user(users["admin"], victim, is_active=False)
    denials.seen = Denials._last()
    refused(client.get(reverse("me")), 401, denials=denials, action="auth.failed")


# --- operator surfaces ------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_metrics_are_for_operators_not_organization_roles(role, users, client_for, denials, settings):
    # Control: relay.observability.views.metrics_view_requiring(PLATFORM_STAFF) (platform staff or the scraper token). The viewer
    # and admin hold view_metrics, which reads their organization's figures, not the platform's.
    settings.RELAY_METRICS_TOKEN = "s" * 40
    me = users[role]
    refused(client_for(me).get(reverse("metrics")), 403, "permission_denied", denials=denials, actor=me)
    refused(client_for(me, "api_key").get(reverse("metrics")), 403, "permission_denied", denials=denials, actor=me)
    anonymous = client_for(me)
    anonymous.logout()
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer " + "x" * 40)
    refused(anonymous.get(reverse("metrics")), 401, denials=denials)


@pytest.mark.parametrize("role", ROLES)
def test_the_admin_site_refuses_non_staff_and_audits_it(role, users, client, denials):
    # Control: RelayAdminSite.refuse_signed_in_outsider (admin access follows the role: is_staff).
    me = users[role]
    client.force_login(me)
    denials.seen = Denials._last()
    for path in ("/admin/accounts/user/", "/admin/", "/admin/login/"):
        response = client.get(path)
        if role == "admin":  # an organization's admins use the console for their organization
            assert response.status_code == 200 or response["Location"] == "/admin/", (path, response.status_code)
            continue
        assert response.status_code == 403 and b"admin console" in response.content, (path, response.status_code)
        refused(response, 403, denials=denials, actor=me, action="permission.denied")


@pytest.mark.parametrize("role", ["user", "viewer", "api_user"])
def test_audit_events_and_export_need_their_permissions(role, users, client_for, denials):
    # Controls: AuditEventListView (ADMIN) and AuditExportView (export_data).
    me = users[role]
    client = client_for(me)
    refused(client.get(reverse("audit-events")), 403, denials=denials, actor=me)
    refused(client.get(reverse("audit-export")), 403, denials=denials, actor=me)
    refused(client.get(reverse("costs-export")), 403, denials=denials, actor=me)


def test_an_admin_key_without_export_data_cannot_export(users, api_client, denials):
    # Control: accounts.permissions.holds (a key acts with the intersection of scopes and owner's rights).
    narrow = create_api_key(users["admin"], "no-export", scopes=["view_metrics"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow}")
    denials.seen = Denials._last()
    refused(api_client.get(reverse("audit-export")), 403, denials=denials)
    refused(api_client.get(reverse("audit-events")), 403, denials=denials)


def test_a_manage_users_key_cannot_make_or_raise_anyone_beyond_itself(users, api_client, denials):
    # Control: accounts.permissions.check_member_change in UserViewSet (create, update, deactivate).
    # Without it, an admin's key scoped to manage_users (an HR sync key) made a full admin with a
    # password, whose JWT then escaped every limit of the key.
    admin, member = users["admin"], users["user"]
    narrow = create_api_key(admin, "hr sync", scopes=["manage_users"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {narrow}")
    denials.seen = Denials._last()
    users_url = reverse("user-list")
    for body in ({"username": "shadow", "role": "admin"}, {"username": "shadow", "role": "user"},
                 {"username": "shadow", "role": "api_user", "password": "Str0ng-Pass-991!"}):
        refused(api_client.post(users_url, body, format="json"), 403, "permission_denied", denials=denials)
    assert not User.objects.filter(username="shadow").exists()
    member_url = reverse("user-detail", args=[member.pk])
    refused(api_client.patch(member_url, {"role": "admin"}, format="json"), 403, "permission_denied", denials=denials)
    refused(api_client.delete(member_url), 403, "permission_denied", denials=denials)  # holds more than the key
    member.refresh_from_db()
    assert member.groups.filter(name="user").exists() and member.is_active

    # Within its powers it still works: a viewer, by a key holding the viewer's permissions.
    hr = create_api_key(admin, "hr", scopes=["manage_users", "use_rag_agent", "view_metrics"]).secret
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {hr}")
    made = api_client.post(users_url, {"username": "reader", "role": "viewer"}, format="json")
    assert made.status_code == 201, made.content
    assert api_client.delete(reverse("user-detail", args=[made.json()["id"]])).status_code == 204


def test_an_admins_narrow_key_sees_and_manages_only_what_a_member_would(users, api_client, denials):
    # Control: accounts.scoping acts_as_admin (the gate's admin reach needs ADMIN through the key, as
    # admin endpoints do) in _visible and manages. Without it, an admin's math-only key listed every
    # member's spend and private documents, and a delete_documents key deleted them.
    from billing.models import ModelPrice, UsageRecord

    admin, member = users["admin"], users["user"]
    private = document_of(member)
    price = ModelPrice.objects.filter(model="local-mini").first()
    UsageRecord.objects.create(organization_id=member.organization_id, user=member, agent="math", model="local-mini",
                               price=price, status="complete", request_id="member-run")
    for scopes in (["use_math_agent"], ["delete_documents", "upload_documents", "view_metrics"]):
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(admin, 'narrow', scopes=scopes).secret}")
        listed = api_client.get(reverse("document-list")).json()
        assert private.pk not in [d["id"] for d in listed.get("results", listed)], listed
        spend = api_client.get(reverse("costs-breakdown")).json()
        assert member.pk not in [row["user"]["id"] for row in spend["by_user"]], spend
    denials.seen = Denials._last()
    refused(api_client.delete(reverse("document-detail", args=[private.pk])), 404, "not_found", denials=denials)
    refused(api_client.post(reverse("document-share", args=[private.pk]), {"users": [admin.pk]}, format="json"),
            404, "not_found", denials=denials)
    assert Document.objects.filter(pk=private.pk).exists()

    everything = create_api_key(admin, "full").secret  # every permission: the admin's reach
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {everything}")
    assert member.pk in [row["user"]["id"] for row in api_client.get(reverse("costs-breakdown")).json()["by_user"]]
    assert api_client.delete(reverse("document-detail", args=[private.pk])).status_code == 204


@pytest.mark.django_db
def test_a_deleted_teams_shares_are_gone_for_its_former_members(org):
    # Control: accounts.actions.teams.delete_team deleting the team's sharing group. Before, the members'
    # teams were cleared by one update (Team.members is SET_NULL) that never left the group, so they kept
    # reading what had been shared with the team. Found by an outside review.
    from accounts.actions.teams import create_team, delete_team
    from accounts.actions.users import create_user
    from accounts.services import TEAM_GROUP_PREFIX
    from agents.actions.documents import share_document
    from agents.documents import readable_documents

    owner = create_user("owner", organization=org, role="user")
    team = create_team(org, "Skunkworks")
    member = create_user("member", organization=org, role="user", team=team)
    document = upload_document(owner, name="plan.txt", data=b"the plan of the skunkworks", content_type="text/plain")
    share_document(owner, document, team_ids=[team.pk])
    assert readable_documents(User.objects.get(pk=member.pk), None).filter(pk=document.pk).exists()
    delete_team(team)
    member = User.objects.get(pk=member.pk)
    assert member.team_id is None and not member.groups.filter(name__startswith=TEAM_GROUP_PREFIX).exists()
    assert not readable_documents(member, None).filter(pk=document.pk).exists()
    assert readable_documents(owner, None).filter(pk=document.pk).exists()  # the owner's own document stays
