"""The audit events of accounts.services, kept here so that module only calls one line each."""

from audit import actions
from audit.services import record

# Never copied into the trail: secrets, and fields that change on every sign-in.
_UNAUDITED_FIELDS = {"password", "last_login"}


def snapshot(user) -> dict:
    return {f.attname: getattr(user, f.attname) for f in user._meta.concrete_fields
            if f.name not in _UNAUDITED_FIELDS}


def user_created(user, role: str) -> None:
    record(actions.USER_CREATED, resource=f"user:{user.pk}", organization=user.organization_id,
           metadata={"username": user.username, "role": role, "team_id": user.team_id})


def user_updated(actor, user, before: dict) -> None:
    after = snapshot(user)
    changes = {name: [before.get(name), value] for name, value in after.items() if before.get(name) != value}
    if changes:
        record(actions.USER_UPDATED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
               metadata={"username": user.username, "changes": changes})


def role_changed(user, previous: str | None, role: str, *, actor=None) -> None:
    if previous != role:
        record(actions.ROLE_CHANGED, actor=actor, resource=f"user:{user.pk}", organization=user.organization_id,
               metadata={"username": user.username, "from": previous, "to": role})


def _key_metadata(key) -> dict:
    return {"name": key.name, "prefix": key.prefix, "owner": key.owner.username, "scopes": key.scopes}


def key_created(key) -> None:
    record(actions.API_KEY_CREATED, resource=f"api_key:{key.pk}", organization=key.owner.organization_id,
           metadata=_key_metadata(key))


def key_revoked(key, *, because_of=None) -> None:
    """because_of: the key above it whose revocation took this one along."""
    metadata = _key_metadata(key)
    if because_of is not None:
        metadata["revoked_with"] = f"api_key:{because_of.pk}"
    record(actions.API_KEY_REVOKED, resource=f"api_key:{key.pk}", organization=key.owner.organization_id,
           metadata=metadata)


def key_rotated(key, old_prefix: str) -> None:
    record(actions.API_KEY_ROTATED, resource=f"api_key:{key.pk}", organization=key.owner.organization_id,
           metadata={**_key_metadata(key), "old_prefix": old_prefix})


def key_used_after_revoke(key) -> None:
    """Someone holds the secret of a revoked key: the owner is named, the attempt refused."""
    record(actions.API_KEY_USED_AFTER_REVOKE, status=actions.DENIED, actor=key.owner, api_key=key,
           resource=f"api_key:{key.pk}", metadata={"name": key.name, "revoked_at": key.revoked_at})


def token_issued(action: str, request, access_token: str) -> None:
    """A JWT pair was issued (sign-in or refresh): the actor is whoever the new token names."""
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.settings import api_settings
    from rest_framework_simplejwt.tokens import AccessToken

    user_id = AccessToken(access_token).get(api_settings.USER_ID_CLAIM)
    user = get_user_model().objects.filter(pk=user_id).first()
    record(action, actor=user, request=request, resource=f"user:{user_id}", metadata={"channel": "jwt"})
