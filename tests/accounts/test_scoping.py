"""The one scoping gate (accounts.scoping): what each kind of caller sees, and that every view uses it."""

import inspect
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.urls import URLPattern, URLResolver, get_resolver
from guardian.shortcuts import assign_perm
from rest_framework.generics import GenericAPIView

from accounts import scoping
from accounts.actions.keys import create_api_key
from accounts.models import APIKey, Team, User
from accounts.scoping import READ, Scoped, restrict
from accounts.services import team_group
from agents.documents import SHARE_PERMISSION, may_manage
from agents.models import Conversation, Document
from audit import actions
from audit.models import AuditEvent
from audit.services import record
from billing.models import ModelPrice


def _routes(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def _drf_views():
    """{route: view class} of every DRF view (viewsets included) the URLconf serves."""
    return {route: callback.cls for route, callback in _routes(get_resolver().url_patterns)
            if hasattr(callback, "cls")}


def _takes_an_id(route: str) -> bool:
    return bool(re.search(r"<[^>]+>|\(\?P<(?!format)", route))


def _serves_rows(cls) -> bool:
    """A generic view with a queryset (a token endpoint is generic too, but serves none)."""
    return issubclass(cls, GenericAPIView) and (
        getattr(cls, "queryset", None) is not None or cls.get_queryset is not GenericAPIView.get_queryset)


def test_every_view_over_rows_and_every_object_route_passes_the_gate():
    views = _drf_views()
    assert len(views) >= 10  # the walk found the API
    outside = sorted(f"{route} ({cls.__name__})" for route, cls in views.items()
                     if (_serves_rows(cls) or _takes_an_id(route)) and not issubclass(cls, Scoped))
    assert not outside, f"these views read rows without accounts.scoping.Scoped: {outside}"


def test_scoped_views_keep_the_gate_and_their_models_have_a_rule():
    for route, cls in _drf_views().items():
        if not issubclass(cls, Scoped):
            continue
        for klass in cls.__mro__[:cls.__mro__.index(Scoped)]:
            if klass.__module__ == scoping.__name__:  # the gate's own bases
                continue
            if "get_queryset" in vars(klass):  # an override must narrow what the gate gives, not replace it
                assert "super().get_queryset()" in inspect.getsource(klass.get_queryset), f"{route}: {klass}"
        queryset = getattr(cls, "queryset", None)
        model = cls.scoped_model or (queryset.model if queryset is not None else None)
        assert model is not None, f"{route} names no model"
        scoping.rule_for(model)  # LookupError: a model served without a rule


def _sources():
    for app in ("accounts", "agents", "audit", "billing", "training", "relay"):
        for path in (Path(settings.BASE_DIR) / app).rglob("*.py"):
            if "migrations" not in path.parts:
                yield path, path.read_text()


def test_the_rule_is_written_once():
    """Guardian shares, superusers' reach and the hidden-object refusal live in the gate alone."""
    for path, text in _sources():
        name = path.relative_to(settings.BASE_DIR).as_posix()
        if name == "accounts/scoping.py":
            continue
        assert "get_objects_for_user" not in text, name
        assert "HIDDEN_OBJECT_DENIED" not in text or name == "audit/actions.py", name
        if "is_superuser" in text:
            assert name in ("accounts/roles.py", "accounts/admin.py", "audit/refusals.py") or "/management/" in name


# restrict() for each kind of caller

@pytest.fixture
def docs(org, other_org, users, other_users):
    def doc(name, organization=None, owner=None, builtin=False):
        return Document.objects.create(name=name, organization=organization, owner=owner, kind="text", sha256="0",
                                       builtin=builtin)

    return {
        "builtin": doc("builtin.md", builtin=True),
        "mine": doc("mine", org, users["user"]),
        "admins": doc("admins", org, users["admin"]),
        "shared": doc("shared", org, users["admin"]),
        "team": doc("team", org, users["admin"]),
        "other": doc("other", other_org, other_users["user"]),
    }


def _names(queryset, among):
    return {name for name, row in among.items() if queryset.filter(pk=row.pk).exists()}


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root", "root@example.com", "x")


def test_an_organization_member_sees_their_organization_only(org, users, other_users):
    viewer = users["viewer"]
    assert set(restrict(User, viewer)) == set(users.values())
    assert set(restrict(Team, viewer)) == set(Team.objects.filter(organization=org))
    assert not restrict(User, viewer).filter(pk=other_users["viewer"].pk).exists()


def test_a_member_sees_documents_they_own_or_that_were_shared_with_them_or_their_team(users, docs):
    assign_perm(SHARE_PERMISSION, users["user"], docs["shared"])
    assign_perm(SHARE_PERMISSION, team_group(users["user"].team), docs["team"])
    assert _names(restrict(Document, users["user"]), docs) == {"builtin", "mine", "shared", "team"}
    assert _names(restrict(Document, users["viewer"]), docs) == {"builtin", "team"}  # same team


def test_an_organization_admin_sees_all_of_their_organization(users, docs):
    assert _names(restrict(Document, users["admin"]), docs) == {"builtin", "mine", "admins", "shared", "team"}
    assert may_manage(users["admin"], docs["mine"]) and not may_manage(users["admin"], docs["other"])
    assert may_manage(users["user"], docs["mine"]) and not may_manage(users["user"], docs["admins"])


def test_personal_rows_are_their_owners_even_to_a_superuser(org, users, superuser):
    mine = Conversation.objects.create(organization=org, user=users["user"], agent="math")
    assert list(restrict(Conversation, users["user"])) == [mine]
    assert not restrict(Conversation, users["admin"]).exists()
    assert not restrict(Conversation, superuser).exists()


def test_superusers_see_every_organization_and_org_less_staff_none(users, other_users, docs, superuser):
    record(actions.USER_UPDATED, actor=other_users["admin"], resource="user:1")
    assert _names(restrict(Document, superuser), docs) == set(docs)
    assert restrict(User, superuser).filter(pk=other_users["user"].pk).exists()
    assert restrict(AuditEvent, superuser).filter(organization_ref=other_users["admin"].organization_id).exists()
    assert may_manage(superuser, docs["other"])
    staff = User.objects.create_user("operator", is_staff=True)  # platform staff, not a superuser
    assert _names(restrict(Document, staff), docs) == {"builtin"}
    assert not restrict(User, staff).exists() and not restrict(AuditEvent, staff).exists()


def test_audit_events_by_the_recorded_organization(org, other_org, users, other_users):
    record(actions.USER_UPDATED, actor=users["admin"], resource="user:1")
    record(actions.USER_UPDATED, actor=other_users["admin"], resource="user:2")
    assert {event.organization_ref for event in restrict(AuditEvent, users["admin"])} == {org.pk}


def test_a_key_with_fewer_scopes_sees_less(users, docs):
    user = users["user"]
    narrow = create_api_key(user, "math", scopes=["use_math_agent"]).key
    full = create_api_key(user, "all").key
    assert _names(restrict(Document, user, narrow, READ), docs) == {"builtin"}
    assert _names(restrict(Document, user, full, READ), docs) == {"builtin", "mine"}
    assert _names(restrict(Document, user, None, READ), docs) == {"builtin", "mine"}
    assert set(restrict(APIKey, user)) == {narrow, full}
    assert set(restrict(APIKey, user, narrow)) == {narrow}  # the wider key is out of the narrow one's reach
    assert not restrict(APIKey, users["admin"]).exists()


def test_anonymous_callers_see_nothing_and_unknown_models_fail_loudly(docs):
    assert not restrict(Document, AnonymousUser()).exists()
    with pytest.raises(LookupError):
        restrict(ModelPrice, AnonymousUser())  # a platform table: no rule
