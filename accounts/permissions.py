"""Where every endpoint's requirement is checked.

A view declares `required_permission`: a codename of docs/design.md section 4, ADMIN (an admin of
the caller's organization), AUTHENTICATED (anyone signed in), or a dict of those per HTTP
method. The URL-walker test reads the same declarations' effects from the outside.
"""

from rest_framework.permissions import BasePermission

from accounts.models import APIKey
from accounts.roles import PERMISSION_CODENAMES, effective_permissions, is_org_admin, is_platform_staff
from accounts.services import key_permissions

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
