"""The one scoping gate: which objects of a model a caller may see (NetBox's `restrict()`).

Every model an API serves declares its Rule once (`register`, from its app's AppConfig.ready,
so accounts need not import the apps to its right); `restrict()` turns a rule and a caller into
a queryset, and every API view reaches it through `Scoped` (tests/accounts/test_scoping.py walks
the URLconf to prove it). The same views answer 404 for an object outside the caller's scope,
and `on_api_error` records that refusal as `permission.hidden_object` when the object exists,
once for every scoped view.

Superusers are the one kind of caller special-cased here: they see every organization's rows.
Platform staff without superuser see no tenant's data; personal rows (conversations, keys)
stay their owner's whoever asks, except for the `administer` action: the admin console
(accounts/admin_site.py) shows an organization's admins its members' keys and conversations to
list, revoke or delete, never to use. Rows a rule marks `guarded` (superusers) are out of every
other caller's reach, whatever the action.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db.models import Model, Q, QuerySet
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from accounts.permissions import ADMIN, PLATFORM_STAFF, holds, request_key
from accounts.roles import is_org_admin

logger = logging.getLogger(__name__)

VIEW, READ, ADMINISTER = "view", "read", "administer"
_NOTHING = Q(pk__in=[])


@dataclass(frozen=True)
class Rule:
    """How rows of one model are scoped.

    organization: lookup path to the row's organization id (None: the rows are personal).
    owner: lookup path to the user who owns the row.
    shared: a guardian object permission that shares a row with a user or their team.
    public: rows everyone sees (Relay's own documents).
    requires: action -> codename the caller (through their key) must hold to get more than `public`.
    within_key: narrows the rows further to what the acting API key may reach.
    administered_by: lookup path to the organization whose admins administer the row in the admin
        console (`administer`), for rows otherwise personal; default: `organization`.
    guarded: rows no caller but a superuser reaches (a superuser who is also a member).
    platform: the platform's own rows (the models Relay serves), no organization's: every row to
        platform staff (accounts.permissions.PLATFORM_STAFF, through their key), none to anyone else.

    An organization's rows are all visible to its members when the rule names neither owner nor
    share; otherwise members see their own and the shared ones, and its admins all of them.
    """

    organization: str | None = None
    owner: str | None = None
    shared: str | None = None
    public: Q | None = None
    requires: dict[str, str] = field(default_factory=dict)
    within_key: Callable[[QuerySet, object, object], QuerySet] | None = None
    administered_by: str | None = None
    guarded: Q | None = None
    platform: bool = False


_rules: dict[type[Model], Rule] = {}


def register(model: type[Model], rule: Rule) -> None:
    _rules[model] = rule


def rule_for(model: type[Model]) -> Rule:
    try:
        return _rules[model]
    except KeyError:
        raise LookupError(f"{model._meta.label} has no scoping rule; register one in its AppConfig.ready") from None


def sees_every_organization(user) -> bool:
    """The one special case: superusers act on every organization."""
    return bool(user.is_superuser)


def restrict(queryset, user, key=None, action: str = VIEW) -> QuerySet:
    """The rows of queryset (or of a model) that user, acting through key (None: directly), may see for action."""
    if not isinstance(queryset, QuerySet):
        queryset = queryset._default_manager.all()
    rule = rule_for(queryset.model)
    if user is None or not user.is_authenticated:
        return queryset.none()
    if rule.platform:
        return queryset if holds(user, key, PLATFORM_STAFF) else queryset.none()
    if rule.guarded is not None and not sees_every_organization(user):
        queryset = queryset.exclude(rule.guarded)
    if action == ADMINISTER:
        return queryset.filter(_administered(rule, user))
    needed = rule.requires.get(action)
    if needed is not None and not holds(user, key, needed):
        return queryset.filter(rule.public or _NOTHING)
    visible = _visible(queryset.model, rule, user, key)
    if visible is not None:
        queryset = queryset.filter(visible)
    if rule.within_key is not None and key is not None:
        queryset = rule.within_key(queryset, user, key)
    return queryset


def acts_as_admin(user, key=None) -> bool:
    """Does the caller act with its admin's (or superuser's) reach? Through a key only when the key
    carries every permission, as for ADMIN endpoints: a narrow key of an admin sees what a member does."""
    return is_org_admin(user) and (key is None or holds(user, key, ADMIN))


def _visible(model, rule: Rule, user, key=None) -> Q | None:
    """The filter of rows user, through key, sees; None: every row."""
    if rule.organization is None:
        return _or(rule.public, Q(**{rule.owner: user.pk}))
    admin = acts_as_admin(user, key)
    if sees_every_organization(user) and admin:
        return None
    if user.organization_id is None:
        return rule.public or _NOTHING
    organization = Q(**{rule.organization: user.organization_id})
    if not (rule.owner or rule.shared) or admin:
        return _or(rule.public, organization)
    mine = Q(**{rule.owner: user.pk}) if rule.owner else None
    if rule.shared:
        from guardian.shortcuts import get_objects_for_user

        shared = get_objects_for_user(user, rule.shared, klass=model, accept_global_perms=False, with_superuser=False)
        mine = _or(mine, Q(pk__in=shared.values("pk")))
    return _or(rule.public, organization & mine)


def _administered(rule: Rule, user) -> Q:
    """The rows the admin console shows user: every row to superusers; an organization's rows,
    personal ones included and Relay's public ones not, to its active admins; none to anyone else."""
    if sees_every_organization(user):
        return Q()
    path = rule.administered_by or rule.organization
    if path is None or user.organization_id is None or not (user.is_active and is_org_admin(user)):
        return _NOTHING
    return Q(**{path: user.organization_id})


def _or(first: Q | None, second: Q) -> Q:
    return second if first is None else first | second


def manages(user, obj: Model, key=None) -> bool:
    """Owners, and admins of the object's organization (superusers: of every one), acting through
    `key` (None: directly), manage it."""
    rule = rule_for(type(obj))
    if rule.owner and _value(obj, rule.owner) == user.pk:
        return True
    if not acts_as_admin(user, key):
        return False
    return sees_every_organization(user) or (
        rule.organization is not None and _value(obj, rule.organization) == user.organization_id)


def _value(obj: Model, name: str):
    """The stored value of a field of obj (a foreign key's id, without fetching the row)."""
    return getattr(obj, obj._meta.get_field(name).attname)


class Scoped:
    """Base of every API view that serves a model's rows: its queryset passes the gate.

    Viewsets (ScopedViewSet) and generic views get `get_queryset` restricted; a plain APIView
    that looks one object up by a URL kwarg declares `scoped_model` and `lookup_url_kwarg`,
    and finds it through `self.scoped(...)`. Either way a 404 for an existing object another
    caller may see is recorded by `on_api_error`.
    """

    scoped_model: type[Model] | None = None
    # View action -> scoping action. Destroy and share look the object up by what the caller
    # sees and decide who may act on it after (403, not 404), so by default every action is `view`.
    scope_actions: dict[str, str] = {}

    def scope_action(self) -> str:
        return self.scope_actions.get(getattr(self, "action", None), VIEW)

    def scoped(self, queryset) -> QuerySet:
        return restrict(queryset, self.request.user, request_key(self.request), self.scope_action())

    def get_queryset(self):
        return self.scoped(super().get_queryset())

    def hidden_lookup(self) -> tuple[type[Model], str] | None:
        queryset = getattr(self, "queryset", None)
        model = self.scoped_model or (queryset.model if queryset is not None else None)
        if model is None:
            return None
        return model, getattr(self, "lookup_url_kwarg", None) or getattr(self, "lookup_field", "pk")


class ScopedViewSet(Scoped, GenericViewSet):
    """The base of every API viewset: `queryset` names the model's rows, the gate narrows them."""


class ScopedAPIView(Scoped, APIView):
    """The base of a plain view that looks one `scoped_model` row up by `lookup_url_kwarg`."""

    lookup_url_kwarg = "pk"

    def get_queryset(self):
        return self.scoped(self.scoped_model._default_manager.all())


def _exists(model: type[Model], value) -> bool:
    if value is None:
        return False
    try:
        return model._default_manager.filter(pk=value).exists()
    except (ValueError, TypeError, LookupError, ValidationError):  # a malformed id: nothing to hide
        return False


def refuse_hidden(model: type[Model], value, *, resource: str, request=None, metadata: dict) -> bool:
    """Record `permission.hidden_object` if the object exists: the caller was refused someone else's.

    Every hidden-object refusal is written here, whether a view answered 404 (`on_api_error`) or
    an action refused a target in another organization (billing.budget_changes).
    """
    from audit import actions
    from audit.services import record

    if not _exists(model, value):
        return False
    record(actions.HIDDEN_OBJECT_DENIED, status=actions.DENIED, request=request, resource=resource,
           metadata=metadata)
    return True


def on_api_error(request, status_code, code, message):
    """relay.api.errors listener: a scoped view's 404 for someone else's object is a `denied` event."""
    from audit import context

    if status_code != 404 or request is None or context.current().denial_recorded:
        return
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if not isinstance(view, Scoped) or (lookup := view.hidden_lookup()) is None:
        return
    model, kwarg = lookup
    value = (getattr(view, "kwargs", None) or {}).get(kwarg)
    try:
        refuse_hidden(model, value, resource=f"{model._meta.model_name}:{value}", request=request,
                      metadata={"method": request.method, "path": request.path[:500], "status": status_code,
                                "code": code})
    except Exception:
        # The refusal itself stands; a failed audit write is logged, never turned into a 500.
        logger.exception("could not record a refused request as denied")


def register_accounts_rules() -> None:
    """The rules of accounts' own models and of the audit trail (audit cannot import accounts)."""
    from accounts.key_tree import keys_within
    from accounts.models import APIKey, Organization, Team, User
    from audit.models import AuditEvent

    register(Organization, Rule(organization="pk"))
    # A superuser who is also a member is no organization admin's to edit, deactivate or sign in as.
    register(User, Rule(organization="organization", guarded=Q(is_superuser=True)))
    register(Team, Rule(organization="organization"))
    # Through a key, only the keys within its powers: a narrow key neither finds nor takes over a wider one.
    register(APIKey, Rule(owner="owner", within_key=lambda keys, user, key: keys & keys_within(user, key),
                          administered_by="owner__organization"))
    # By the hashed reference, not the pointer: the pointer is outside the hash, so repointing it
    # by SQL must not hand an event to another organization (verify_audit names such an event).
    register(AuditEvent, Rule(organization="organization_ref"))
