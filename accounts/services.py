"""Rules and reads for users and API keys: roles, scopes, key checks. No HTTP here.

Every state change is in accounts/actions/ (organizations, users, teams, keys, tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import string
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import key_tree
from accounts.key_tree import key_within, keys_within  # noqa: F401 (part of this module's API)
from accounts.models import APIKey, Team, User
from accounts.roles import (
    AGENT_PERMISSIONS,
    PERMISSION_CODENAMES,
    ROLES,
    TEAM_GROUP_PREFIX,
    effective_permissions,
)
from audit import actions
from audit.services import record
from relay import versioned_cache
from relay.redis_cache import replace_if

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


# --- Roles and teams ------------------------------------------------------------------------

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


# --- API keys -------------------------------------------------------------------------------

@dataclass
class IssuedKey:
    """A key together with its secret; the only moment the secret exists outside the client."""

    key: APIKey
    secret: str


def hash_secret(full_key: str, version: str) -> str:
    server_secret = settings.RELAY_API_KEY_HASH_SECRETS[version].encode()
    return hmac.new(server_secret, full_key.encode(), hashlib.sha256).hexdigest()


def new_key_material() -> tuple[str, str]:
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


def under_parent(owner: User, parent: APIKey, limits: dict) -> dict:
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


def key_cache_key(prefix: str) -> str:
    return f"apikey:{prefix}"


# A forgotten key leaves a marker, not an empty slot: a request that read the row before the
# change committed and writes its copy after the forget (set-if-absent: `cache.add`) then finds
# the slot taken, and nothing stale is cached. The marker is written twice: `forgotten` at once
# (the change may not have committed yet: nobody may cache what they read now) and, once it has
# committed, `forgotten:<nonce>`. A request that finds the committed marker read the row after
# the commit, so it may put its copy in the marker's place, and only in that marker's place
# (compare-and-set): a later change has written its own marker first. Without the second
# marker a changed or new key was read from the database on every use for 30 seconds.
_FORGOTTEN = "forgotten"
_FORGOTTEN_SECONDS = 30


def forget_cached_key(prefix: str) -> None:
    """Drop the cached copy of a key now and, with a marker readers may replace, once the change commits."""
    cache.set(key_cache_key(prefix), _FORGOTTEN, _FORGOTTEN_SECONDS)
    transaction.on_commit(lambda: cache.set(key_cache_key(prefix), f"{_FORGOTTEN}:{secrets.token_hex(8)}",
                                            _FORGOTTEN_SECONDS))


def _committed_marker(cached) -> bool:
    return isinstance(cached, str) and cached.startswith(f"{_FORGOTTEN}:")


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
    cached = versioned_cache.get_along(key_cache_key(prefix))  # the price copies' token in the same trip
    if cached == "missing":
        return None
    if cached is not None and cached != _FORGOTTEN and not _committed_marker(cached):
        return cached
    # The ancestors come in the same query and stay in the cached copy: the throttle, the token
    # limit and the budgets walk them without a query (accounts/key_tree.py).
    key = APIKey.objects.select_related("owner", "owner__organization", "owner__team", key_tree.CHAIN).filter(
        prefix=prefix).first()
    if key is not None:
        # Computed now, the owner's permissions travel in the cached copy: no permission queries
        # per request. Role and role-permission changes drop the copy (accounts/signals.py).
        effective_permissions(key.owner)
    copy, seconds = (key, _KEY_CACHE_SECONDS) if key else ("missing", 30)
    if cached is None:  # set-if-absent: a marker written meanwhile stays (see forget_cached_key)
        cache.add(key_cache_key(prefix), copy, seconds)
    elif _committed_marker(cached):  # read after the change committed: in that marker's place only
        replace_if(key_cache_key(prefix), cached, copy, seconds)
    return key


_REVOKED = "This API key has been revoked."


def authenticate_key(presented: str, *, client_ip: str | None = None) -> APIKey:
    prefix = parse_key(presented)
    key = _lookup(prefix)
    reason = key_refusal(key, presented, client_ip)
    if reason == _REVOKED:
        # Someone holds the secret of a revoked key: the owner is named, the attempt refused.
        record(actions.API_KEY_USED_AFTER_REVOKE, status=actions.DENIED, actor=key.owner, api_key=key,
               resource=f"api_key:{key.pk}", metadata={"name": key.name, "revoked_at": key.revoked_at})
    if reason is not None:
        raise KeyRejected(reason)
    touch_last_used(key)
    return key


def key_refusal(key: APIKey | None, presented: str, client_ip: str | None) -> str | None:
    """Why the presented secret may not act as `key` (the row its prefix found; None: no row) now, or
    None when it may. No I/O: the key's chain travels with it."""
    # Hash even when the prefix is unknown so timing does not reveal which prefixes exist.
    version = key.hash_version if key else settings.RELAY_API_KEY_HASH_VERSION
    expected = key.secret_hash if key else "0" * 64
    if version not in settings.RELAY_API_KEY_HASH_SECRETS:
        return "Invalid API key."
    if not hmac.compare_digest(hash_secret(presented, version), expected) or key is None:
        return "Invalid API key."
    if key.revoked_at is not None:
        return _REVOKED
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return "This API key has expired."
    if not key.owner.is_active:
        return "The owner of this API key is deactivated."
    for ancestor in key_tree.ancestors(key):  # loaded with the key: no query
        if ancestor.revoked_at is not None:
            return "This API key has been revoked with the key it was made from."
        if ancestor.expires_at is not None and ancestor.expires_at <= timezone.now():
            return "The key this API key was made from has expired."
    if not addresses_admit(key, client_ip):
        return "This API key may not be used from this address."
    return None


def admitted_cached_key(presented: str, cached, client_ip: str | None) -> APIKey | None:
    """The key a presented secret acts as, from the key cache's entry for its prefix (`cached`,
    read by the caller), when nothing about it needs the database or a write: a cached row (not a
    marker), whose chain is loaded, that admits the secret now, and whose last use was noted this
    minute. None otherwise, refusals included: authenticate_key then decides, and records, the
    same way as ever (accounts.admission.admit_on_loop)."""
    if not isinstance(cached, APIKey) or not key_tree.chain_loaded(cached):
        return None
    if key_refusal(cached, presented, client_ip) is not None or _touch_due(cached):
        return None
    return cached


def addresses_admit(key: APIKey, client_ip: str | None) -> bool:
    """Whether the key and every key above it may be used from client_ip (a key without ranges: anywhere)."""
    return not any(link.allowed_ips and not ip_allowed(client_ip, link.allowed_ips) for link in key_tree.chain(key))


def ip_allowed(client_ip: str | None, ranges: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr, strict=False) for cidr in ranges)


def _touch_due(key: APIKey) -> bool:
    moment, resolution = time.monotonic(), _LAST_USED_RESOLUTION.total_seconds()
    return _last_touched.get(key.prefix, -resolution) <= moment - resolution


def touch_last_used(key: APIKey) -> None:
    """Record use at most once a minute per key, so the hot path does not write every request."""
    # This process's own memory first: only its first use of a key each minute asks the shared cache.
    if not _touch_due(key):
        return
    moment, resolution = time.monotonic(), _LAST_USED_RESOLUTION.total_seconds()
    if len(_last_touched) > 10_000:
        _last_touched.clear()
    _last_touched[key.prefix] = moment
    now = timezone.now()
    if cache.add(f"apikey-used:{key.pk}", 1, int(resolution)):
        APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def key_permissions(key: APIKey) -> set[str]:
    """What a key may do now: its scopes, cut down to those of the keys above it and to what its owner
    still holds."""
    return key_tree.scopes(key) & effective_permissions(key.owner)



