"""Where every endpoint's requirement is checked.

A view declares `required_permission`: a codename of docs/design.md section 4, ADMIN (an admin of
the caller's organization), AUTHENTICATED (anyone signed in), or a dict of those per HTTP
method. The URL-walker test reads the same declarations' effects from the outside.
"""

from rest_framework.permissions import BasePermission

from accounts.models import APIKey
from accounts.roles import (
    PERMISSION_CODENAMES,
    ROLE_ADMIN,
    effective_permissions,
    is_org_admin,
    is_platform_staff,
    role_permissions,
)
from accounts.services import PrivilegeRefused, key_permissions

ADMIN = "@admin"
AUTHENTICATED = "@authenticated"
# An operator of the whole platform, for platform-wide data such as /metrics: no organization
# role holds it (accounts.roles.is_platform_staff).
PLATFORM_STAFF = "@platform-staff"


def holds(user, key: APIKey | None, requirement: str) -> bool:
    """Does this user, acting through this key (or directly when key is None), meet requirement?"""
    if not user or not user.is_authenticated or not user.is_active:
        return False
    if requirement == AUTHENTICATED:
        return True
    if requirement == PLATFORM_STAFF:
        # No organization role reaches it, whatever its codenames; a key only with every scope.
        return is_platform_staff(user) and (key is None or key_permissions(key) >= set(PERMISSION_CODENAMES))
    granted = key_permissions(key) if key is not None else effective_permissions(user)
    if requirement == ADMIN:
        # A key reaches admin-only endpoints only when it carries every permission of its admin owner.
        return is_org_admin(user) and (key is None or granted >= set(PERMISSION_CODENAMES))
    return requirement in granted


def check_member_change(user, key: APIKey | None, *, role: str | None = None, member=None,
                        password: bool = False) -> None:
    """Members are managed only within the caller's own powers (through its key when it acts with one).

    A role is given only by a caller holding every permission of it, the admin role only by an
    admin (through a key with every permission); a member is changed only by a caller holding every
    permission the member has; a password is set only directly, since one set through a key would
    be a credential outside the key's limits. PrivilegeRefused otherwise (403, audited).
    """
    powers = key_permissions(key) if key is not None else effective_permissions(user)
    admin = holds(user, key, ADMIN)
    granted = role_permissions(role) if role is not None else None  # None: unknown, refused as bad input later
    if role is not None and ((role == ROLE_ADMIN and not admin) or (granted is not None and not granted <= powers)):
        raise PrivilegeRefused(f"You cannot give the role {role!r}: it holds more than you do.")
    if member is not None and ((is_org_admin(member) and not admin) or not effective_permissions(member) <= powers):
        raise PrivilegeRefused("You cannot change a member who holds more than you do.")
    if password and key is not None:
        raise PrivilegeRefused("A password cannot be set through an API key: it would outlive the key's limits.")


def requirement_for(view, method: str) -> str:
    declared = getattr(view, "required_permission", AUTHENTICATED)
    if isinstance(declared, dict):
        return declared.get(method.upper(), declared.get("*", AUTHENTICATED))
    return declared


def request_key(request) -> APIKey | None:
    return request.auth if isinstance(request.auth, APIKey) else None


class RequiresPermission(BasePermission):
    message = "You do not have permission to perform this action."

    def has_permission(self, request, view):
        requirement = requirement_for(view, request.method)
        if requirement is None:  # explicitly public (health checks, token endpoints)
            return True
        return holds(request.user, request_key(request), requirement)
