"""Rules for users and API keys: creation, roles, scopes, key checks. No HTTP here."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts import key_tree
from accounts.key_tree import key_within, keys_within  # noqa: F401 (part of this module's API)
from accounts.models import APIKey, Organization, Team, User
from accounts.roles import (
    AGENT_PERMISSIONS,
    PERMISSION_CODENAMES,
    ROLES,
    TEAM_GROUP_PREFIX,
    effective_permissions,
    role_of,
)
from audit import accounts_events as audit_events

KEY_PREFIX = "rk_"
_PREFIX_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LENGTH = 12
_KEY_CACHE_SECONDS = 300
_LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_touched: dict[str, float] = {}  # key prefix -> when this process last claimed the write


class PrivilegeRefused(PermissionDenied):
    """An attempt to gain a right the caller does not hold (the API answers 403 and audits it as denied).

    Distinct from ValidationError (malformed input, 400): this is a refusal of privilege.
    """


class KeyRejected(Exception):
    """A presented key is not valid; `reason` is safe to show the client."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- Organizations and users ----------------------------------------------------------------

def create_organization(name: str, *, time_zone: str = "UTC") -> Organization:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "An organization needs a name."})
    slug = slugify(name)[:200] or secrets.token_hex(4)
    if Organization.objects.filter(name=name).exists():
        raise ValidationError({"name": f"An organization named {name!r} already exists."})
    org = Organization(name=name, slug=slug, time_zone=time_zone)
    org.full_clean()
    org.save()
    return org


def get_team(organization: Organization, team: Team | str | int | None) -> Team | None:
    """The team named (or with that id) inside the organization, created by name if new."""
    if team is None or team == "":
        return None
    if isinstance(team, Team):
        if team.organization_id != organization.pk:
            raise ValidationError({"team": "The team belongs to another organization."})
        return team
    if isinstance(team, int):
        found = Team.objects.filter(organization=organization, pk=team).first()
        if not found:
            raise ValidationError({"team": f"No team {team} in {organization}."})
        return found
    return Team.objects.get_or_create(organization=organization, name=str(team).strip())[0]


def set_role(user: User, role: str, *, actor: User | None = None, audited: bool = True) -> None:
    group = Group.objects.filter(name=role).exclude(name__startswith=TEAM_GROUP_PREFIX).first()
    if group is None:
        raise ValidationError({"role": f"Unknown role {role!r}; roles are {', '.join(known_roles())}."})
    previous = role_of(user) if audited else None
    team_groups = list(user.groups.filter(name__startswith=TEAM_GROUP_PREFIX))
    user.groups.set([group, *team_groups])
    # Django caches permissions on the instance; a role change must be seen at once.
    for attr in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(attr, None)
    if audited:
        audit_events.role_changed(user, previous, role, actor=actor)


def known_roles() -> list[str]:
    names = Group.objects.exclude(name__startswith=TEAM_GROUP_PREFIX).order_by("name").values_list("name", flat=True)
    return list(names) or ROLES


def team_group(team: Team) -> Group:
    """The team's sharing group, made on first use with the team's current members in it."""
    if team.group_id is None:
        team.group, _ = Group.objects.get_or_create(name=f"{TEAM_GROUP_PREFIX}{team.pk}")
        team.save(update_fields=["group"])
        team.group.user_set.add(*team.members.all())
    return team.group


def sync_team_group(user: User) -> None:
    """Keep a user's team-group membership equal to their current team."""
    # Read the team's group from the database: the instance's cached team may predate its group.
    current = Team.objects.filter(pk=user.team_id).values_list("group_id", flat=True).first() if user.team_id else None
    stale = user.groups.filter(name__startswith=TEAM_GROUP_PREFIX).exclude(pk=current)
    if stale.exists():
        user.groups.remove(*stale)
    if current and not user.groups.filter(pk=current).exists():
        user.groups.add(current)


@transaction.atomic
def create_user(
    username: str, *, organization: Organization, role: str, email: str = "", password: str | None = None,
    team: Team | str | int | None = None, first_name: str = "", last_name: str = "",
) -> User:
    if User.objects.filter(username=username).exists():
        raise ValidationError({"username": f"A user named {username!r} already exists."})
    user = User(
        username=username, email=email, organization=organization, first_name=first_name, last_name=last_name,
        team=get_team(organization, team),
    )
    if password:
        from django.contrib.auth.password_validation import validate_password

        validate_password(password, user)
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    set_role(user, role, audited=False)
    audit_events.user_created(user, role)
    return user


# --- API keys -------------------------------------------------------------------------------

@dataclass
class IssuedKey:
    """A key together with its secret; the only moment the secret exists outside the client."""

    key: APIKey
    secret: str


def hash_secret(full_key: str, version: str) -> str:
    server_secret = settings.RELAY_API_KEY_HASH_SECRETS[version].encode()
    return hmac.new(server_secret, full_key.encode(), hashlib.sha256).hexdigest()


def _new_key_material() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_LENGTH))
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def validate_key_grants(
    owner: User, scopes, allowed_agents, allowed_models=None, allowed_ips=None, *, grantable: set[str] | None = None,
) -> None:
    """A key may only narrow its owner's rights (or, made through a key, that key's), never widen them.

    Unknown names or malformed ranges are bad input (ValidationError, 400); asking for a permission
    or agent the grantor lacks is a privilege refusal (PrivilegeRefused, 403, audited as denied).
    """
    errors, refused = {}, []
    owned = effective_permissions(owner) if grantable is None else grantable
    unknown = [s for s in scopes if s not in PERMISSION_CODENAMES]
    if unknown:
        errors["scopes"] = f"Unknown permissions: {', '.join(map(str, unknown))}."
    bad_agents = [a for a in allowed_agents if a not in AGENT_PERMISSIONS]
    if bad_agents:
        errors["allowed_agents"] = f"Unknown agents: {', '.join(map(str, bad_agents))}."
    for cidr in allowed_ips or []:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (ValueError, TypeError):
            errors["allowed_ips"] = f"{cidr!r} is not an IP address or CIDR range."
            break
    if errors:
        raise ValidationError(errors)
    lacking = [s for s in scopes if s not in owned]
    if lacking:
        refused.append(f"the scopes {', '.join(lacking)}")
    denied_agents = [a for a in allowed_agents if AGENT_PERMISSIONS.get(a) and AGENT_PERMISSIONS[a] not in owned]
    if denied_agents:
        refused.append(f"the agents {', '.join(denied_agents)}")
    if refused:
        raise PrivilegeRefused(f"The owner does not hold {'; '.join(refused)}: a key cannot be given more.")


def narrow_to_parent(parent: APIKey, *, allowed_agents, allowed_models, allowed_ips, expires_at,
                     requests_per_minute=None, tokens_per_minute=None) -> dict:
    """A key minted through another key: it inherits that key's limits and may not loosen them.

    An empty list (or no rate) means "no restriction", so an unrestricted child of a restricted
    key would be an escalation: omitted limits are inherited, wider ones refused (PrivilegeRefused).
    Returns the new key's limits by field name.
    """
    refused = []

    def narrowed(asked, limit, label):
        if not limit:
            return asked
        if not asked:
            return list(limit)
        outside = [item for item in asked if item not in limit]
        if outside:
            refused.append(f"{label} {', '.join(map(str, outside))}")
        return asked

    def at_most(asked, limit, label):
        if limit is not None and asked is not None and asked > limit:
            refused.append(f"more than its {limit} {label}")
        return limit if asked is None else asked

    allowed_agents = narrowed(allowed_agents, parent.allowed_agents, "the agents")
    allowed_models = narrowed(allowed_models, parent.allowed_models, "the models")
    if parent.allowed_ips and allowed_ips and not set(allowed_ips) <= set(parent.allowed_ips):
        refused.append("addresses outside the key's allowed_ips")
    allowed_ips = allowed_ips or list(parent.allowed_ips)
    if parent.expires_at is not None:
        if expires_at is not None and expires_at > parent.expires_at:
            refused.append("an expiry later than the key's own")
        expires_at = expires_at or parent.expires_at
    requests_per_minute = at_most(requests_per_minute, parent.requests_per_minute, "requests per minute")
    tokens_per_minute = at_most(tokens_per_minute, parent.tokens_per_minute, "tokens per minute")
    if refused:
        raise PrivilegeRefused(f"A key cannot be given what the key creating it lacks: {'; '.join(refused)}.")
    return {"allowed_agents": allowed_agents, "allowed_models": allowed_models, "allowed_ips": allowed_ips,
            "expires_at": expires_at, "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute}


def _under_parent(owner: User, parent: APIKey, limits: dict) -> dict:
    """The limits of a key minted through `parent`, which must stay a live, shallow enough tree."""
    if parent.owner_id != owner.pk:
        raise ValueError("A key minted through a key belongs to that key's owner.")
    if len(key_tree.ancestors(parent)) >= key_tree.MAX_ANCESTORS:
        raise ValidationError(f"Keys nest at most {key_tree.MAX_ANCESTORS} deep: this key cannot mint keys; "
                              "create the key with a key higher up or from the console.")
    # Locked until this commits: a revocation of the parent either sees the new key or is seen here.
    if APIKey.objects.select_for_update().filter(pk=parent.pk, revoked_at__isnull=False).exists():
        raise PrivilegeRefused("The key making this request has been revoked.")
    return narrow_to_parent(parent, **limits)


@transaction.atomic
def create_api_key(
    owner: User, name: str, *, scopes: list[str] | None = None, allowed_agents: list[str] | None = None,
    allowed_models: list[str] | None = None, allowed_ips: list[str] | None = None,
    expires_at: datetime | None = None, requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None, grantable: set[str] | None = None, parent: APIKey | None = None,
) -> IssuedKey:
    """A new key for owner; `parent` is the key the request came through, whose limits bind the new one."""
    if not owner.is_active:
        raise ValidationError({"owner": "The owner is deactivated."})
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A key needs a name."})
    # Without explicit scopes a key gets what its owner holds today.
    if grantable is None:
        grantable = effective_permissions(owner)
    scopes = sorted(set(grantable if scopes is None else scopes))
    limits = {"allowed_agents": sorted(set(allowed_agents or [])), "allowed_models": allowed_models or [],
              "allowed_ips": allowed_ips or [], "expires_at": expires_at,
              "requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute}
    if parent is not None:
        limits = _under_parent(owner, parent, limits)
    validate_key_grants(owner, scopes, limits["allowed_agents"], limits["allowed_models"], limits["allowed_ips"],
                        grantable=grantable)
    if limits["expires_at"] is not None and limits["expires_at"] <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    prefix, secret = _new_key_material()
    version = settings.RELAY_API_KEY_HASH_VERSION
    key = APIKey(
        owner=owner, name=name[:100], prefix=prefix, secret_hash=hash_secret(secret, version), hash_version=version,
        scopes=scopes, parent=parent, **{**limits, "allowed_models": sorted(set(limits["allowed_models"])),
                                         "allowed_ips": list(limits["allowed_ips"])},
    )
    # The rule every key operation answers to, checked on what is about to exist.
    if parent is not None and not key_within(key, parent):
        raise PrivilegeRefused("A key can only mint keys within its own powers.")
    key.save(force_insert=True)
    audit_events.key_created(key)
    return IssuedKey(key=key, secret=secret)


@transaction.atomic
def revoke_api_key(key: APIKey) -> APIKey:
    """Revoke a key and every key minted below it, each audited; no cached copy outlives the commit."""
    key = APIKey.objects.select_for_update().select_related("owner").get(pk=key.pk)
    family = [key, *key_tree.descendants(key, lock=True)]
    now, revoked = timezone.now(), []
    for member in family:
        if member.revoked_at is None:
            member.revoked_at = now
            revoked.append(member)
    APIKey.objects.filter(pk__in=[member.pk for member in revoked]).update(revoked_at=now)
    for member in revoked:
        audit_events.key_revoked(member, because_of=None if member is key else key)
    prefixes = [member.prefix for member in family]

    def forget():
        for prefix in prefixes:
            forget_cached_key(prefix)

    # Now for this process, and after the commit so nobody caches the rows as they were before it.
    forget()
    transaction.on_commit(forget)
    return key


@transaction.atomic
def rotate_api_key(key: APIKey) -> IssuedKey:
    """A new secret for the same key (its id, budgets and history stay); the old one dies at once."""
    key = APIKey.objects.select_for_update().get(pk=key.pk)
    if not key.is_active:
        raise ValidationError({"key": "A revoked or expired key cannot be rotated."})
    old_prefix = key.prefix
    key.prefix, secret = _new_key_material()
    key.hash_version = settings.RELAY_API_KEY_HASH_VERSION
    key.secret_hash = hash_secret(secret, key.hash_version)
    key.save(update_fields=["prefix", "secret_hash", "hash_version"])
    transaction.on_commit(lambda: forget_cached_key(old_prefix))
    forget_cached_key(old_prefix)
    audit_events.key_rotated(key, old_prefix)
    return IssuedKey(key=key, secret=secret)


def _cache_key(prefix: str) -> str:
    return f"apikey:{prefix}"


def forget_cached_key(prefix: str) -> None:
    cache.delete(_cache_key(prefix))


def parse_key(presented: str) -> str:
    """The prefix of a well-formed key, or KeyRejected."""
    if not presented.startswith(KEY_PREFIX):
        raise KeyRejected("API keys start with rk_.")
    body = presented[len(KEY_PREFIX):]
    prefix, sep, secret = body.partition("_")
    if not sep or len(prefix) != _PREFIX_LENGTH or len(secret) < 43 or len(presented) > 128:
        raise KeyRejected("Malformed API key.")
    return prefix


def _lookup(prefix: str) -> APIKey | None:
    """The key row for a prefix, through the cache (invalidated on revoke and rotate)."""
    cached = cache.get(_cache_key(prefix))
    if cached == "missing":
        return None
    if cached is not None:
        return cached
    # The ancestors come in the same query and stay in the cached copy: the throttle, the token
    # limit and the budgets walk them without a query (accounts/key_tree.py).
    key = APIKey.objects.select_related("owner", "owner__organization", "owner__team", key_tree.CHAIN).filter(
        prefix=prefix).first()
    if key is not None:
        # Computed now, the owner's permissions travel in the cached copy: no permission queries
        # per request. Role and role-permission changes drop the copy (accounts/signals.py).
        effective_permissions(key.owner)
    cache.set(_cache_key(prefix), key if key else "missing", _KEY_CACHE_SECONDS if key else 30)
    return key


def authenticate_key(presented: str, *, client_ip: str | None = None) -> APIKey:
    prefix = parse_key(presented)
    key = _lookup(prefix)
    # Hash even when the prefix is unknown so timing does not reveal which prefixes exist.
    version = key.hash_version if key else settings.RELAY_API_KEY_HASH_VERSION
    expected = key.secret_hash if key else "0" * 64
    if version not in settings.RELAY_API_KEY_HASH_SECRETS:
        raise KeyRejected("Invalid API key.")
    if not hmac.compare_digest(hash_secret(presented, version), expected) or key is None:
        raise KeyRejected("Invalid API key.")
    if key.revoked_at is not None:
        audit_events.key_used_after_revoke(key)
        raise KeyRejected("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise KeyRejected("This API key has expired.")
    if not key.owner.is_active:
        raise KeyRejected("The owner of this API key is deactivated.")
    for ancestor in key_tree.ancestors(key):  # loaded with the key: no query
        if ancestor.revoked_at is not None:
            raise KeyRejected("This API key has been revoked with the key it was made from.")
        if ancestor.expires_at is not None and ancestor.expires_at <= timezone.now():
            raise KeyRejected("The key this API key was made from has expired.")
    if key.allowed_ips and not ip_allowed(client_ip, key.allowed_ips):
        raise KeyRejected("This API key may not be used from this address.")
    touch_last_used(key)
    return key


def ip_allowed(client_ip: str | None, ranges: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in ranges)


def touch_last_used(key: APIKey) -> None:
    """Record use at most once a minute per key, so the hot path does not write every request."""
    # This process's own memory first: only its first use of a key each minute asks the shared cache.
    moment, resolution = time.monotonic(), _LAST_USED_RESOLUTION.total_seconds()
    if _last_touched.get(key.prefix, -resolution) > moment - resolution:
        return
    if len(_last_touched) > 10_000:
        _last_touched.clear()
    _last_touched[key.prefix] = moment
    now = timezone.now()
    if cache.add(f"apikey-used:{key.pk}", 1, int(resolution)):
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def key_permissions(key: APIKey) -> set[str]:
    """What a key may do now: its scopes, cut down to what its owner still holds."""
    return set(key.scopes) & effective_permissions(key.owner)


_UNSET = object()


@transaction.atomic
def update_user(actor: User, user: User, *, role: str | None = None, team=_UNSET, is_active: bool | None = None,
                **profile) -> User:
    """Change a user's profile, role, team or active flag on behalf of an admin (actor)."""
    if user.pk == actor.pk and (role is not None or is_active is False or team is not _UNSET):
        raise PrivilegeRefused("You cannot change your own role, team or active state.")
    before = audit_events.snapshot(user)
    for name, value in profile.items():
        setattr(user, name, value)
    if team is not _UNSET:
        user.team = get_team(user.organization, team)
    if is_active is not None:
        user.is_active = is_active
    user.full_clean(exclude=["password"])
    user.save()
    audit_events.user_updated(actor, user, before)
    if role is not None:
        set_role(user, role, actor=actor)
    return user
