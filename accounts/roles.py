"""Roles and permissions of docs/design.md section 4: the one place the matrix is written down.

Roles are Django groups; the data migration creates them from ROLE_PERMISSIONS. Admins may add
more groups in the admin, and a user whose group is not one of these still gets exactly that
group's permissions.
"""

ALL_PERMISSIONS = [
    ("use_math_agent", "Can use the math agent"),
    ("use_code_agent", "Can use the code agent"),
    ("use_rag_agent", "Can use the RAG agent"),
    ("use_vision_agent", "Can use the vision agent"),
    ("view_metrics", "Can view metrics and organization usage"),
    ("manage_users", "Can manage users and roles"),
    ("export_data", "Can export data"),
    ("manage_training", "Can manage training"),
    ("upload_documents", "Can upload documents"),
    ("delete_documents", "Can delete documents"),
]
PERMISSION_CODENAMES = [codename for codename, _ in ALL_PERMISSIONS]

ROLE_ADMIN, ROLE_USER, ROLE_VIEWER, ROLE_API_USER = "admin", "user", "viewer", "api_user"
ROLE_PERMISSIONS = {
    ROLE_ADMIN: PERMISSION_CODENAMES,
    ROLE_USER: ["use_math_agent", "use_code_agent", "use_rag_agent", "use_vision_agent", "upload_documents"],
    ROLE_VIEWER: ["use_rag_agent", "view_metrics"],
    ROLE_API_USER: ["use_math_agent", "use_code_agent", "use_rag_agent"],
}
ROLES = list(ROLE_PERMISSIONS)
APP_LABEL = "accounts"


def perm(codename: str) -> str:
    """The dotted name `user.has_perm` takes."""
    return f"{APP_LABEL}.{codename}"


TEAM_GROUP_PREFIX = "team:"


def role_of(user) -> str | None:
    """The user's role: the name of their (first) role group, or None. Team groups are not roles."""
    if not getattr(user, "pk", None):
        return None
    names = [group.name for group in user.groups.all() if not group.name.startswith(TEAM_GROUP_PREFIX)]
    return names[0] if names else None


def is_org_admin(user) -> bool:
    """Admins act on everything within their organization; superusers on every organization."""
    return bool(user.is_superuser or role_of(user) == ROLE_ADMIN)


def is_platform_staff(user) -> bool:
    """Operators of the platform itself: superusers, and staff who belong to no organization.

    Staff inside an organization only run the admin console for it; they are not operators.
    """
    return bool(user.is_active and (user.is_superuser or (user.is_staff and user.organization_id is None)))


def effective_permissions(user) -> set[str]:
    """Relay codenames the user holds now (superusers hold all)."""
    if not user.is_active:
        return set()
    if user.is_superuser:
        return set(PERMISSION_CODENAMES)
    return {name.split(".", 1)[1] for name in user.get_all_permissions() if name.startswith(APP_LABEL + ".")}

def role_permissions(role: str) -> set[str] | None:
    """Relay codenames the role (a role group) grants; None for a name that is no role."""
    from django.contrib.auth.models import Group

    group = Group.objects.filter(name=role).exclude(name__startswith=TEAM_GROUP_PREFIX).first()
    if group is None:
        return None
    return set(group.permissions.filter(content_type__app_label=APP_LABEL).values_list("codename", flat=True))


# The permission each agent needs. `general` answers from the docs (or the configured language
# model) and is open to every role, so it needs none.
AGENT_PERMISSIONS = {
    "math": "use_math_agent",
    "code": "use_code_agent",
    "rag": "use_rag_agent",
    "vision": "use_vision_agent",
    "general": None,
}


def ensure_roles(**kwargs) -> None:
    """Recreate any missing role group (post_migrate: e.g. after `flush`), leaving edited ones alone."""
    from django.contrib.auth.models import Group, Permission

    for role, codenames in ROLE_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=role)
        if created:
            group.permissions.set(Permission.objects.filter(content_type__app_label=APP_LABEL, codename__in=codenames))
