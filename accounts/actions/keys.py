"""API keys: issued, revoked (with every key minted below), rotated; edited and deleted in the admin."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import key_tree
from accounts.models import APIKey, User
from accounts.roles import effective_permissions
from accounts.services import (
    IssuedKey,
    PrivilegeRefused,
    forget_cached_key,
    hash_secret,
    key_within,
    new_key_material,
    under_parent,
    validate_key_grants,
)
from audit import actions
from audit.services import record


def _metadata(key: APIKey) -> dict:
    return {"name": key.name, "prefix": key.prefix, "owner": key.owner.username, "scopes": key.scopes}


def _event(action: str, key: APIKey, *, actor=None, pk=None, **extra) -> None:
    record(action, actor=actor, resource=f"api_key:{key.pk if pk is None else pk}",
           organization=key.owner.organization_id, metadata={**_metadata(key), **extra})


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
        limits = under_parent(owner, parent, limits)
    validate_key_grants(owner, scopes, limits["allowed_agents"], limits["allowed_models"], limits["allowed_ips"],
                        grantable=grantable)
    if limits["expires_at"] is not None and limits["expires_at"] <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    prefix, secret = new_key_material()
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
    _event(actions.API_KEY_CREATED, key)
    return IssuedKey(key=key, secret=secret)


@transaction.atomic
def revoke_api_key(key: APIKey, *, actor=None) -> APIKey:
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
        # revoked_with: the key above it whose revocation took this one along.
        _event(actions.API_KEY_REVOKED, member, actor=actor,
               **({} if member is key else {"revoked_with": f"api_key:{key.pk}"}))
    for member in family:  # now, and again once this commits (accounts.services.forget_cached_key)
        forget_cached_key(member.prefix)
    return key


@transaction.atomic
def rotate_api_key(key: APIKey, *, actor=None) -> IssuedKey:
    """A new secret for the same key (its id, budgets and history stay); the old one dies at once."""
    key = APIKey.objects.select_for_update().get(pk=key.pk)
    if not key.is_active:
        raise ValidationError({"key": "A revoked or expired key cannot be rotated."})
    old_prefix = key.prefix
    key.prefix, secret = new_key_material()
    key.hash_version = settings.RELAY_API_KEY_HASH_VERSION
    key.secret_hash = hash_secret(secret, key.hash_version)
    key.save(update_fields=["prefix", "secret_hash", "hash_version"])
    forget_cached_key(old_prefix)  # now, and again once this commits
    _event(actions.API_KEY_ROTATED, key, actor=actor, old_prefix=old_prefix)
    return IssuedKey(key=key, secret=secret)


@transaction.atomic
def save_api_key(key: APIKey, *, actor=None) -> APIKey:
    """A key's name and limits as edited in the admin; it may not be given more than its owner holds."""
    validate_key_grants(key.owner, key.scopes, key.allowed_agents, key.allowed_models, key.allowed_ips)
    before = APIKey.objects.get(pk=key.pk)
    key.save()
    changed = sorted(f.attname for f in key._meta.concrete_fields
                     if getattr(before, f.attname) != getattr(key, f.attname))
    _event(actions.API_KEY_UPDATED, key, actor=actor, changed=changed)
    return key


@transaction.atomic
def delete_api_key(key: APIKey, *, actor=None) -> None:
    """Gone with every key minted below it (APIKey.parent cascades); an event for the key asked for.

    ProtectedError when one of them was used: its usage records keep it (its spend counts against the
    budgets above it), so it is revoked instead.
    """
    key = APIKey.objects.select_related("owner").get(pk=key.pk)
    pk, prefixes = key.pk, [key.prefix, *(child.prefix for child in key_tree.descendants(key))]
    key.delete()
    for prefix in prefixes:  # now, and again once this commits
        forget_cached_key(prefix)
    _event(actions.API_KEY_DELETED, key, actor=actor, pk=pk)
