"""Roles (django.contrib.auth groups) as edited in the admin; a user's role is set in users.set_role."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import Group
from django.db import transaction

from audit import actions
from audit.services import record


def _permissions(group: Group) -> list[str]:
    return sorted(group.permissions.values_list("codename", flat=True))


@transaction.atomic
def save_role(group: Group, *, actor=None, save_related: Callable[[], None] = lambda: None) -> Group:
    """A role and its permissions (save_related saves them after the group row)."""
    created = group.pk is None
    before = [] if created else _permissions(group)
    group.save()
    save_related()
    after = _permissions(group)
    metadata = {"name": group.name, "permissions": after}
    if not created:
        metadata.update(added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)))
    record(actions.ROLE_CREATED if created else actions.ROLE_UPDATED, actor=actor, resource=f"role:{group.pk}",
           metadata=metadata)
    return group


@transaction.atomic
def delete_role(group: Group, *, actor=None) -> None:
    pk, name = group.pk, group.name
    group.delete()
    record(actions.ROLE_DELETED, actor=actor, resource=f"role:{pk}", metadata={"name": name})
