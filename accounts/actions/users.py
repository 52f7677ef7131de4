"""Users: created, changed, given a role or a password, deactivated, deleted."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.actions.teams import resolve_team
from accounts.models import Organization, Team, User
from accounts.roles import ROLE_ADMIN, TEAM_GROUP_PREFIX, role_of
from accounts.scoping import sees_every_organization
from accounts.services import PrivilegeRefused, known_roles
from audit import actions
from audit.services import record

# Never copied into the trail: secrets, and fields that change on every sign-in.
_UNAUDITED_FIELDS = {"password", "last_login"}
_UNSET = object()


def snapshot(user: User) -> dict:
    return {f.attname: getattr(user, f.attname) for f in user._meta.concrete_fields
            if f.name not in _UNAUDITED_FIELDS}


def _changes(before: dict, user: User) -> dict:
    return {name: [before.get(name), value] for name, value in snapshot(user).items() if before.get(name) != value}


def _record_created(user: User, role: str | None, *, actor=None) -> None:
    record(actions.USER_CREATED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
           metadata={"username": user.username, "role": role, "team_id": user.team_id, "admin_site": user.is_staff})


def _sync_admin_access(user: User, role: str | None) -> bool:
    """The admin console follows the role: an organization's admins have it, its other members do
    not. Superusers and platform staff (no organization) keep what they have. True: it changed."""
    if sees_every_organization(user) or user.organization_id is None or user.is_staff == (role == ROLE_ADMIN):
        return False
    user.is_staff = role == ROLE_ADMIN
    user.save(update_fields=["is_staff"])
    return True


def _assign_role(user: User, role: str) -> str | None:
    """Give the user the role (keeping their team group); the role they had before."""
    group = Group.objects.filter(name=role).exclude(name__startswith=TEAM_GROUP_PREFIX).first()
    if group is None:
        raise ValidationError({"role": f"Unknown role {role!r}; roles are {', '.join(known_roles())}."})
    previous = role_of(user)
    team_groups = list(user.groups.filter(name__startswith=TEAM_GROUP_PREFIX))
    user.groups.set([group, *team_groups])
    # Django caches permissions on the instance; a role change must be seen at once.
    for attr in ("_perm_cache", "_user_perm_cache", "_group_perm_cache", "_relay_org_admin"):
        user.__dict__.pop(attr, None)
    _sync_admin_access(user, role)
    return previous


@transaction.atomic
def set_role(user: User, role: str, *, actor: User | None = None) -> None:
    previous = _assign_role(user, role)
    if previous != role:
        record(actions.ROLE_CHANGED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
               metadata={"username": user.username, "from": previous, "to": role, "admin_site": user.is_staff})


@transaction.atomic
def create_user(
    username: str, *, organization: Organization, role: str, email: str = "", password: str | None = None,
    team: Team | str | int | None = None, first_name: str = "", last_name: str = "", actor=None,
) -> User:
    if User.objects.filter(username=username).exists():
        raise ValidationError({"username": f"A user named {username!r} already exists."})
    user = User(
        username=username, email=email, organization=organization, first_name=first_name, last_name=last_name,
        team=resolve_team(organization, team, actor=actor),
    )
    if password:
        validate_password(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    _assign_role(user, role)
    _record_created(user, role, actor=actor)
    return user


@transaction.atomic
def update_user(actor: User | None, user: User, *, role: str | None = None, team=_UNSET, is_active: bool | None = None,
                **profile) -> User:
    """Change a user's profile, role, team or active flag on behalf of an admin (actor; None: a command)."""
    if actor is not None and user.pk == actor.pk and (role is not None or is_active is False or team is not _UNSET):
        raise PrivilegeRefused("You cannot change your own role, team or active state.")
    before = snapshot(user)
    for name, value in profile.items():
        setattr(user, name, value)
    if team is not _UNSET:
        user.team = resolve_team(user.organization, team, actor=actor)
    if is_active is not None:
        user.is_active = is_active
    user.full_clean(exclude=["password"])
    user.save()
    if changes := _changes(before, user):
        record(actions.USER_UPDATED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
               metadata={"username": user.username, "changes": changes})
    if role is not None:
        set_role(user, role, actor=actor)
    return user


@transaction.atomic
def change_password(user: User, password: str | None, *, actor=None) -> User:
    """A new password (validated), or None: no password, the user signs in with API keys only."""
    if password:
        validate_password(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save(update_fields=["password"])
    record(actions.PASSWORD_CHANGED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
           metadata={"username": user.username, "usable": user.has_usable_password()})
    return user


@transaction.atomic
def save_user(user: User, *, actor=None, save_related: Callable[[], None] = lambda: None,
              role: str | None = None) -> User:
    """A user as edited in the admin (its forms have validated it), with its groups (save_related)
    or, from an organization admin's form, its role.

    One event either way: a new user, or their changes with the role among them.
    """
    created = user.pk is None
    before = {} if created else snapshot(User.objects.get(pk=user.pk))
    previous = None if created else role_of(User.objects.get(pk=user.pk))
    user.save()
    save_related()
    if role is not None:
        _assign_role(user, role)
    for attr in ("_perm_cache", "_user_perm_cache", "_group_perm_cache", "_relay_org_admin"):
        user.__dict__.pop(attr, None)
    role = role_of(User.objects.get(pk=user.pk))
    _sync_admin_access(user, role)
    if created:
        _record_created(user, role, actor=actor)
        return user
    changes = _changes(before, user)
    if previous != role:
        changes["role"] = [previous, role]
    record(actions.USER_UPDATED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
           metadata={"username": user.username, "changes": changes, "admin_site": user.is_staff})
    return user


@transaction.atomic
def delete_user(user: User, *, actor=None) -> None:
    """Delete outright (the admin's choice; the API deactivates): their keys go, audit history stays."""
    pk, organization_id = user.pk, user.organization_id
    user.delete()
    record(actions.USER_DELETED, actor=actor, resource=f"user:{pk}", organization=organization_id,
           metadata={"username": user.username})
